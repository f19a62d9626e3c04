# exec-allinone's rpm %pre (packaged by dist/packages.sh; rpm runs it before the files are laid
# down, `$1` = 1 on install, 2 on upgrade): creates the system user and group exec-allinone.
getent group exec-allinone >/dev/null || groupadd -r exec-allinone || exit 1
getent passwd exec-allinone >/dev/null ||
    useradd -r -g exec-allinone -d /var/lib/exec-allinone -M -s /usr/sbin/nologin \
        -c "exec-allinone recording path" exec-allinone || exit 1
exit 0
