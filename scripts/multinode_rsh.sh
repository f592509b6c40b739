#!/bin/sh
# Open MPI's "remote shell" for the three-node test cluster of scripts/multinode.sh:
#
#   mpiexec --hostfile /tmp/acme-multinode/hostfile --mca plm rsh \
#           --mca plm_rsh_agent scripts/multinode_rsh.sh ...
#
# Called as `multinode_rsh.sh [options] HOST COMMAND...` (like ssh). HOST is a node's
# address (10.77.0.1-3) or name (node1-3); the command runs in that node's network
# namespace (/run/netns/nodeN) and in a UTS namespace of its own whose hostname is nodeN,
# so that socket.gethostname(), MPI_Get_processor_name() and Open MPI's session folders
# (/tmp/ompi.<hostname>...) are the node's own.
#
# Like ssh, the command is given to a shell as one string and the caller's environment
# is NOT passed on (only a login-like PATH/HOME/USER): whatever the ranks need has to be
# forwarded by mpiexec (-x VAR), as on a real cluster. Set ACME_RSH_KEEP_ENV=1 to pass the
# whole environment through instead.
while [ $# -gt 0 ]; do
    case $1 in
        -*) shift ;;            # ssh-style options (none expected): ignored
        *) break ;;
    esac
done
[ $# -ge 2 ] || { echo "usage: $0 HOST COMMAND..." >&2; exit 255; }
host=$1
shift
case $host in
    10.77.0.1|node1) node=node1 ;;
    10.77.0.2|node2) node=node2 ;;
    10.77.0.3|node3) node=node3 ;;
    *) echo "$0: unknown host '$host' (known: 10.77.0.1-3, node1-3)" >&2; exit 255 ;;
esac
[ -e "/run/netns/$node" ] || { echo "$0: no network namespace $node (scripts/multinode.sh up)" >&2; exit 255; }

# The whole command as one string, as ssh hands it to the remote login shell.
command_line="$*"
if [ "${ACME_RSH_KEEP_ENV:-0}" = 1 ]; then
    set -- env
else
    set -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME="${HOME:-/root}" USER="$(id -un)" LOGNAME="$(id -un)" SHELL=/bin/sh \
        LANG=C.UTF-8
fi
exec "$@" nsenter --net="/run/netns/$node" -- unshare --uts -- \
    /bin/sh -c 'hostname "$1" && exec /bin/sh -c "$2"' sh "$node" "$command_line"
