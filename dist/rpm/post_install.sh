# exec-allinone's rpm %post (packaged by dist/packages.sh; `$1` = 1 on install, 2 on upgrade):
# makes /var/lib/exec-allinone (exec-allinone:exec-allinone, 0750, as the unit's StateDirectory=
# wants it) and, on a first install, gives /etc/exec-allinone to group exec-allinone
# (root:exec-allinone, 0750) so the service can read its configuration there; an operator's
# later choice survives upgrades. Neither directory is owned by the package, so an erase keeps
# them. Tells systemd about the unit file; enables and starts nothing.
install -d -o exec-allinone -g exec-allinone -m 0750 /var/lib/exec-allinone || exit 1
if [ "$1" = 1 ]; then
    chown root:exec-allinone /etc/exec-allinone && chmod 0750 /etc/exec-allinone || exit 1
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
exit 0
