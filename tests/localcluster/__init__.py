"""The local Kubernetes cluster used by the tests and the demo.

A real control plane (etcd, kube-apiserver, kube-controller-manager, the CSI snapshot controller
and sidecars) built from Go modules under ``go/``, the project's hostpath CSI driver, and a node
emulator that stands in for the kubelet. Start it with ``python -m localcluster up`` (with
``tests`` on ``PYTHONPATH``) or, in pytest, through the session fixture ``local_cluster``.

This package module imports nothing: the node emulator and the service stand-ins run as
``python -m localcluster.<module>`` and should not pay for the launcher's imports.
"""
