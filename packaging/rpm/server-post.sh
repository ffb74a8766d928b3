install -d -o dfs -g dfs -m 0750 /var/lib/dfs
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl preset dfs-meta.service dfs-server.service >/dev/null 2>&1 || :
    fi
fi
exit 0
