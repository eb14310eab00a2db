"""Node emulator for the local cluster: a kubelet stand-in that runs known images as local
processes, binds pending pods (there is no scheduler) and proxies loopback Service IPs.

Run it with `python -m localcluster.node --kubeconfig K --state-dir S --bin-dir B`.
"""
