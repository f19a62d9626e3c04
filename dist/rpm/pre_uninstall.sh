# exec-allinone's rpm %preun (packaged by dist/packages.sh; `$1` = 0 on erase, 1 on upgrade): on
# erase, stops the running exec-allinone@ units, whose binary is about to go. An upgrade stops
# nothing. Disables nothing and deletes nothing.
if [ "$1" = 0 ] && [ -d /run/systemd/system ]; then
    systemctl stop 'exec-allinone@*.service' || :
fi
exit 0
