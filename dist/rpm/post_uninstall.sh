# exec-allinone's rpm %postun (packaged by dist/packages.sh): tells systemd the unit file changed
# or went. An erase keeps /var/lib/exec-allinone, the operator's files in /etc/exec-allinone, an
# edited example.toml (as example.toml.rpmsave) and the user and group exec-allinone.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
exit 0
