getent group dfs >/dev/null || groupadd -r dfs
getent passwd dfs >/dev/null || useradd -r -g dfs -d /var/lib/dfs -s /sbin/nologin -c "dfs storage services" dfs
exit 0
