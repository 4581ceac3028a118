#!/bin/sh
# Copies the mounted main.cf and master.cf into /etc/postfix (a bind mount keeps the host's owner, which
# Postfix's checks warn about), checks them, and runs Postfix in the foreground as the container's process.
set -eu
install -m 0644 -o root -g root /etc/postfix-showcase/main.cf /etc/postfix-showcase/master.cf /etc/postfix/
postfix check
exec postfix start-fg
