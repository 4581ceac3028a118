#!/bin/sh
# Writes the plugin's token from MAILOWL_TOKEN into a file only rspamd reads (local.d/mailowl.conf
# includes it), makes the folders systemd would make, and runs rspamd in the foreground.
set -eu
case "${MAILOWL_TOKEN:-}" in
  *[!A-Za-z0-9._~+/=-]*) echo "rspamd-showcase: MAILOWL_TOKEN may hold only A-Z a-z 0-9 . _ ~ + / = -" >&2; exit 2 ;;
esac
install -d -o root -g _rspamd -m 0750 /run/mailowl-rspamd
umask 027
printf 'token = "%s";\n' "${MAILOWL_TOKEN:-}" > /run/mailowl-rspamd/token.conf
chgrp _rspamd /run/mailowl-rspamd/token.conf
install -d -o _rspamd -g _rspamd /run/rspamd /var/lib/rspamd /var/log/rspamd
exec rspamd -f -u _rspamd -g _rspamd "$@"
