#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine, as root, for scripts/test-k8s-node: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy and the kubelet, all v1.20.2
# built from Debian bookworm's `kubernetes` source package by real-apiserver.sh, with containerd
# and runc from Debian's packages. Its own cluster, apart from the API server the other tests
# share: API server on 10.88.0.1:6444 (the pod bridge's gateway, so pods reach it too), etcd on
# 127.0.0.1:2389, services in 10.97.0.0/24, pods on bridge `sigil0` (10.88.0.0/24, Debian's CNI
# bridge + host-local plugins), kube-proxy in iptables mode. No cluster DNS and no registry:
# images are built here (`images`) and imported into containerd.
#   real-node.sh start    # the cluster; prints the admin KUBECONFIG
#   real-node.sh images   # pause (the source's pause.c), sigil:dev and sigil-workload:dev from
#                         # $SIGIL_NODE_BINARIES (default target/release), into the node's containerd
#   real-node.sh stop     # everything stopped and removed: pods, mounts, cgroups, bridge, rules
# Needs: real-apiserver.sh build (binaries under $SIGIL_K8S/bin), Debian's containerd, runc,
# containernetworking-plugins, iptables, conntrack, umoci and busybox-static, gcc, openssl.
set -euo pipefail
K=${SIGIL_K8S:-/var/tmp/sigil-k8s}
N=$K/node
P=$N/pki
B=$K/bin
# the node's name; pods resolve it through the test overlay's hostAliases (as on clusters whose
# node names are in DNS), the kubelet's serving certificate names it
NODE=sigil-node-1
GW=10.88.0.1
API=https://$GW:6444
CTR="ctr --address $N/containerd/containerd.sock --namespace k8s.io"
REPO=$(cd "$(dirname "$0")/../.." && pwd)

log() { printf '[real-node %s] %s\n' "$(date -u +%T)" "$*" >&2; }

pki() {
  # kept between starts while the CA has a day left (the certificates live 30 days)
  [ -f $P/ca.crt ] && openssl x509 -checkend 86400 -noout -in $P/ca.crt >/dev/null && return 0
  rm -rf $P && mkdir -p $P && chmod 0700 $P
  openssl req -x509 -newkey rsa:2048 -nodes -keyout $P/ca.key -out $P/ca.crt -days 30 -subj /CN=sigil-node-ca 2>/dev/null
  openssl genrsa -out $P/sa.key 2048 2>/dev/null && openssl rsa -in $P/sa.key -pubout -out $P/sa.pub 2>/dev/null
  cert apiserver /CN=kube-apiserver "subjectAltName=IP:$GW,IP:127.0.0.1,IP:10.97.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  # the kubelet's serving certificate, signed by the cluster CA as a real cluster's serving-cert
  # bootstrap would: the agent verifies it against the CA in its service account volume
  cert kubelet "/CN=system:node:$NODE/O=system:nodes" "subjectAltName=DNS:$NODE,IP:127.0.0.1,IP:$GW"
  cert apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client/O=system:masters" "extendedKeyUsage=clientAuth"
  # static tokens for the control plane's own clients (fresh per machine, never printed)
  local t
  (umask 077 && : >$N/tokens.csv)
  for who in "admin,admin-uid,system:masters" "system:node:$NODE,node-uid,system:nodes" \
    "system:kube-controller-manager,kcm-uid" "system:kube-scheduler,sched-uid" "system:kube-proxy,proxy-uid"; do
    t=$(openssl rand -hex 24)
    echo "$t,$who" >>$N/tokens.csv
    kubeconfig "${who%%,*}" "$t"
  done
  chmod 0600 $N/tokens.csv
}

cert() { # name subject extension
  openssl req -newkey rsa:2048 -nodes -keyout $P/$1.key -out $P/$1.csr -subj "$2" 2>/dev/null
  printf '%s\n' "$3" >$P/$1.ext
  openssl x509 -req -in $P/$1.csr -CA $P/ca.crt -CAkey $P/ca.key -CAcreateserial -out $P/$1.crt -days 30 -extfile $P/$1.ext 2>/dev/null
}

kubeconfig() { # user token
  local f
  case $1 in admin) f=admin ;; system:node:*) f=kubelet ;; *) f=${1#system:} ;; esac
  (umask 077 && cat >$N/$f.kubeconfig) <<KC
apiVersion: v1
kind: Config
clusters:
- name: node
  cluster: {server: "$API", certificate-authority: "$P/ca.crt"}
users:
- name: u
  user: {token: $2}
contexts:
- name: node
  context: {cluster: node, user: u}
current-context: node
KC
}

daemon() { # name command...
  local name=$1
  shift
  setsid "$@" >$N/logs/$name.log 2>&1 </dev/null &
  echo $! >$N/pids/$name
}

wait_for() { # what seconds command...
  local what=$1 secs=$2
  shift 2
  for _ in $(seq 1 $((secs * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  log "$what did not come up; logs in $N/logs"
  return 1
}

start() {
  for b in kube-apiserver kubelet kube-controller-manager kube-scheduler kube-proxy kubectl; do
    [ -x $B/$b ] || { log "$B/$b missing: run real-apiserver.sh build first"; exit 1; }
  done
  for c in containerd runc ctr iptables umoci busybox; do
    command -v $c >/dev/null || { log "$c missing: apt-get install containerd runc containernetworking-plugins iptables conntrack umoci busybox-static"; exit 1; }
  done
  stop >/dev/null 2>&1 || true
  mkdir -p $N/logs $N/pids $N/cni/net.d $N/cni/ipam $N/kubelet
  # what the kubelet writes outside $N (pod logs) is what is newer than this
  touch $N/started
  pki
  host_network
  containerd_start
  daemon etcd $K/root/usr/bin/etcd --name node --data-dir $N/etcd \
    --listen-client-urls http://127.0.0.1:2389 --advertise-client-urls http://127.0.0.1:2389 \
    --listen-peer-urls http://127.0.0.1:2390 --initial-advertise-peer-urls http://127.0.0.1:2390 \
    --initial-cluster node=http://127.0.0.1:2390
  daemon kube-apiserver $B/kube-apiserver --etcd-servers=http://127.0.0.1:2389 --bind-address=$GW \
    --advertise-address=$GW --secure-port=6444 --insecure-port=0 --cert-dir=$N/apiserver-certs \
    --tls-cert-file=$P/apiserver.crt --tls-private-key-file=$P/apiserver.key \
    --client-ca-file=$P/ca.crt --token-auth-file=$N/tokens.csv \
    --kubelet-client-certificate=$P/apiserver-kubelet-client.crt --kubelet-client-key=$P/apiserver-kubelet-client.key \
    --kubelet-certificate-authority=$P/ca.crt --kubelet-preferred-address-types=InternalIP \
    --authorization-mode=Node,RBAC --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file=$P/sa.pub --service-account-signing-key-file=$P/sa.key \
    --api-audiences=https://kubernetes.default.svc.cluster.local --service-cluster-ip-range=10.97.0.0/24 \
    --enable-admission-plugins=NodeRestriction --profiling=false --allow-privileged=true --v=1
  wait_for "kube-apiserver" 60 kubectl_admin get --raw /readyz
  daemon kube-controller-manager $B/kube-controller-manager --kubeconfig=$N/kube-controller-manager.kubeconfig \
    --authentication-kubeconfig=$N/kube-controller-manager.kubeconfig --authorization-kubeconfig=$N/kube-controller-manager.kubeconfig \
    --service-account-private-key-file=$P/sa.key --root-ca-file=$P/ca.crt --use-service-account-credentials=true \
    --controllers='*,-nodeipam,-csrsigning,-csrapproving,-bootstrapsigner,-tokencleaner' \
    --leader-elect=false --port=0 --bind-address=127.0.0.1 --secure-port=10257 --profiling=false --v=1
  daemon kube-scheduler $B/kube-scheduler --kubeconfig=$N/kube-scheduler.kubeconfig \
    --authentication-kubeconfig=$N/kube-scheduler.kubeconfig --authorization-kubeconfig=$N/kube-scheduler.kubeconfig \
    --leader-elect=false --port=0 --bind-address=127.0.0.1 --secure-port=10259 --profiling=false --v=1
  daemon kube-proxy $B/kube-proxy --kubeconfig=$N/kube-proxy.kubeconfig --hostname-override=$NODE \
    --proxy-mode=iptables --cluster-cidr=10.88.0.0/24 --conntrack-max-per-core=0 \
    --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256 --v=1
  kubelet_start
  wait_for "node $NODE Ready" 120 sh -c "$B/kubectl --kubeconfig=$N/admin.kubeconfig get node $NODE -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  storage
  echo "export KUBECONFIG=$N/admin.kubeconfig  # admin of the one-node cluster; node $NODE"
}

# What a storage provisioner would do for the server's volumeClaimTemplate: a hostPath volume
# the server's user (65532) owns.
storage() {
  install -d -m 0700 -o 65532 -g 65532 $N/pv/spire-data
  kubectl_admin apply -f - >/dev/null <<PV
apiVersion: v1
kind: PersistentVolume
metadata: {name: spire-data-0}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: "$N/pv/spire-data", type: Directory}
PV
}

kubectl_admin() { $B/kubectl --kubeconfig=$N/admin.kubeconfig "$@"; }

# Pods reach each other and Services through the bridge: forwarding on, and bridged traffic seen
# by iptables (kube-proxy's rules). The settings before are kept and put back by stop.
host_network() {
  [ -f $N/sysctl.saved ] || {
    printf 'net.ipv4.ip_forward=%s\nnet.bridge.bridge-nf-call-iptables=%s\n' \
      "$(cat /proc/sys/net/ipv4/ip_forward)" "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables)" >$N/sysctl.saved
  }
  echo 1 >/proc/sys/net/ipv4/ip_forward
  echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
  ip link show sigil0 >/dev/null 2>&1 || ip link add sigil0 type bridge
  ip addr replace $GW/24 dev sigil0
  ip link set sigil0 up
  cat >$N/cni/net.d/10-sigil.conflist <<CNI
{"cniVersion": "0.4.0", "name": "sigil-node", "plugins": [
  {"type": "bridge", "bridge": "sigil0", "isGateway": true, "isDefaultGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$N/cni/ipam", "ranges": [[{"subnet": "10.88.0.0/24", "gateway": "$GW"}]]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
CNI
}

containerd_start() {
  mkdir -p $N/containerd
  cat >$N/containerd/config.toml <<TOML
version = 2
root = "$N/containerd/root"
state = "$N/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$N/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/sigil-pause:3.4.1"
  # This machine withholds CAP_SYS_RESOURCE even from root, so runc cannot lower a container's
  # oom_score_adj below containerd's own (the kubelet asks -998 for sandboxes): clamp instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$N/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # runc's state beside containerd's, not in /run/containerd, which a system containerd owns
        Root = "$N/containerd/runc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$N/containerd/opt"
TOML
  daemon containerd containerd --config $N/containerd/config.toml
  wait_for containerd 30 $CTR version
}

kubelet_start() {
  cat >$N/kubelet.yaml <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$P/ca.crt"}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
clusterDomain: cluster.local
tlsCertFile: "$P/kubelet.crt"
tlsPrivateKeyFile: "$P/kubelet.key"
failSwapOn: false
# the node's address on the pod bridge only (the API server and the agent reach it there)
address: $GW
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
serializeImagePulls: false
YAML
  daemon kubelet $B/kubelet --config=$N/kubelet.yaml --kubeconfig=$N/kubelet.kubeconfig \
    --container-runtime=remote --container-runtime-endpoint=unix://$N/containerd/containerd.sock \
    --root-dir=$N/kubelet --cert-dir=$N/kubelet/pki --node-ip=$GW --hostname-override=$NODE --v=1
}

# Builds the images the cluster needs without a registry or a Docker engine: OCI layouts made
# with umoci from files on this machine, imported into containerd.
images() {
  local I=$N/images
  umask 022
  rm -rf $I && mkdir -p $I
  log "pause from the Kubernetes source's build/pause/linux/pause.c"
  gcc -Os -static -DVERSION=v3.4.1-sigil -o $I/pause $K/src/kubernetes-1.20.2/build/pause/linux/pause.c
  image localhost/sigil-pause 3.4.1 --entry /pause --user 65535:65535 --file $I/pause:/pause
  local R=${SIGIL_NODE_BINARIES:-$REPO/target/release}
  for b in sigil-server sigil-agent checkout-service payment-processor; do
    [ -x $R/$b ] || { log "$R/$b missing: cargo build --release first"; exit 1; }
  done
  # deploy/Dockerfile's image: both binaries where it copies them, glibc, and its ENTRYPOINT, CMD
  # and USER, read from the Dockerfile itself so the two cannot drift apart
  local d=$REPO/deploy/Dockerfile entry cmd user
  entry=$(dockerfile_json ENTRYPOINT $d) cmd=$(dockerfile_json CMD $d) user=$(sed -n 's/^USER //p' $d)
  grep -q '^COPY --from=builder /out/sigil-server /out/sigil-agent /usr/local/bin/$' $d ||
    { log "deploy/Dockerfile no longer copies the binaries to /usr/local/bin: update images()"; exit 1; }
  image docker.io/library/sigil dev --entry "$entry" --cmd "$cmd" --user "$user" --libs \
    --file $R/sigil-server:/usr/local/bin/sigil-server --file $R/sigil-agent:/usr/local/bin/sigil-agent
  # a workload: busybox (sh, sleep) and the zero-trust example's services
  image docker.io/library/sigil-workload dev --entry /bin/sh --user 1000:1000 --libs --busybox \
    --file $R/checkout-service:/usr/local/bin/checkout-service \
    --file $R/payment-processor:/usr/local/bin/payment-processor \
    --file $R/sigil-agent:/usr/local/bin/sigil-agent
}

# A Dockerfile instruction's exec-form argument list, one argument per line.
dockerfile_json() { # instruction file
  sed -n "s/^$1 //p" "$2" | python3 -c 'import json, sys; print("\n".join(json.loads(sys.stdin.read())))'
}

image() { # name tag [--entry args] [--cmd args] [--user u:g] [--libs] [--busybox] [--file src:dst]...
  # (--entry and --cmd: one argument per line)
  local name=$1 tag=$2 entry= cmd= user= libs= bb= files=()
  shift 2
  while [ $# -gt 0 ]; do
    case $1 in
      --entry) entry=$2; shift 2 ;;
      --cmd) cmd=$2; shift 2 ;;
      --user) user=$2; shift 2 ;;
      --libs) libs=1; shift ;;
      --busybox) bb=1; shift ;;
      --file) files+=("$2"); shift 2 ;;
      *) log "image: unknown option $1"; exit 1 ;;
    esac
  done
  local I=$N/images L=$N/images/${name##*/} root
  umoci init --layout $L
  umoci new --image $L:$tag
  umoci unpack --image $L:$tag $L.bundle >/dev/null
  root=$L.bundle/rootfs
  mkdir -p $root/etc $root/tmp $root/usr/local/bin && chmod 1777 $root/tmp
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\nworkload:x:1000:1000::/tmp:/sbin/nologin\n' >$root/etc/passwd
  printf 'root:x:0:\nnonroot:x:65532:\nworkload:x:1000:\n' >$root/etc/group
  local f src dst
  for f in "${files[@]}"; do
    src=${f%%:*} dst=${f#*:}
    install -D -s -m 0755 "$src" "$root$dst"
    if [ -n "$libs" ]; then
      # the shared libraries the binary loads, at the paths the loader looks for them
      for lib in $(ldd "$src" | grep -o '/[^ ]*'); do
        install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
      done
    fi
  done
  if [ -n "$bb" ]; then
    install -D -m 0755 "$(command -v busybox)" $root/bin/busybox
    for a in sh sleep cat ls ps id env kill wget echo test; do ln -sf busybox $root/bin/$a; done
  fi
  umoci repack --image $L:$tag $L.bundle >/dev/null
  local cfg=(--image $L:$tag --config.user "$user" --config.env PATH=/usr/local/bin:/bin) a
  while read -r a; do [ -n "$a" ] && cfg+=(--config.entrypoint "$a"); done <<<"$entry"
  while read -r a; do [ -n "$a" ] && cfg+=(--config.cmd "$a"); done <<<"$cmd"
  umoci config "${cfg[@]}"
  umoci gc --layout $L
  rm -rf $L.bundle
  tar -C $L -cf $L.tar .
  $CTR images import --base-name $name $L.tar >/dev/null
  log "image $name:$tag imported"
}

stop() (
  # best effort throughout (a subshell: errexit stays on for the caller): whatever is gone is skipped
  set +e
  local f
  if [ -f $N/pids/kubelet ] && [ -S $N/containerd/containerd.sock ]; then
    # the pods' containers and sandboxes first, while containerd still runs
    kill "$(cat $N/pids/kubelet)" 2>/dev/null || true
    for c in $($CTR containers ls -q 2>/dev/null); do
      $CTR tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
    done
    sleep 1
  fi
  for f in kube-proxy kube-scheduler kube-controller-manager kubelet kube-apiserver etcd; do
    [ -f $N/pids/$f ] && kill "$(cat $N/pids/$f)" 2>/dev/null || true
  done
  # containerd's shims each own a pod: stop them, then containerd
  pkill -f "containerd-shim-runc-v2 -namespace k8s.io -address $N/containerd/containerd.sock" 2>/dev/null || true
  [ -f $N/pids/containerd ] && kill "$(cat $N/pids/containerd)" 2>/dev/null || true
  sleep 1
  pkill -9 -f "containerd-shim-runc-v2 -namespace k8s.io -address $N/containerd/containerd.sock" 2>/dev/null || true
  rm -f $N/pids/*
  # every mount under the node's directories (pod volumes, overlay rootfs, netns)
  grep -o " $N/[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  grep -o ' /run/netns/cni-[^ ]*' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -f /run/netns/cni-* 2>/dev/null || true
  # the kubelet's and runc's cgroups
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h/kubepods" ] && find "$h/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  # kube-proxy's, the kubelet's and the CNI plugins' rules (chains KUBE-*, CNI-*), and the bridge
  local ipt t prefix
  for ipt in iptables ip6tables; do
    command -v $ipt-save >/dev/null || continue
    for t in nat filter mangle; do
      for prefix in KUBE CNI; do
        $ipt-save -t $t | grep -- "-j $prefix-" | sed 's/^-A/-D/' | while read -r r; do eval $ipt -t $t "$r"; done
        $ipt-save -t $t | grep -o "^:$prefix-[^ ]*" | tr -d : | while read -r c; do $ipt -t $t -F "$c"; done
        $ipt-save -t $t | grep -o "^:$prefix-[^ ]*" | tr -d : | while read -r c; do $ipt -t $t -X "$c"; done
      done
    done
  done 2>/dev/null
  ip link del sigil0 2>/dev/null || true
  if [ -f $N/sysctl.saved ]; then
    sed -n 's/^net.ipv4.ip_forward=//p' $N/sysctl.saved >/proc/sys/net/ipv4/ip_forward
    sed -n 's/^net.bridge.bridge-nf-call-iptables=//p' $N/sysctl.saved >/proc/sys/net/bridge/bridge-nf-call-iptables
    rm -f $N/sysctl.saved
  fi
  # the cluster's state, containerd's with its images (`images` imports them after each start);
  # the PKI stays for the next start
  rm -rf $N/etcd $N/kubelet $N/cni/ipam $N/containerd $N/pv /run/spire/sockets
  rmdir /run/spire 2>/dev/null || true
  # the shims' socket directory (fixed by containerd), if nothing else uses it
  rmdir /run/containerd/s /run/containerd 2>/dev/null || true
  # the pods' logs, which the kubelet v1.20 writes under /var/log/pods (links in /var/log/containers)
  [ -f $N/started ] && find /var/log/pods /var/log/containers -mindepth 1 -maxdepth 1 -newer $N/started \
    -exec rm -rf {} + 2>/dev/null
  rm -f $N/started
  log "stopped"
)

"${1:-start}" "${@:2}"
