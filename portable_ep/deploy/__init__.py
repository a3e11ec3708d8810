"""``portable-ep deploy render``: Kubernetes and KServe manifests for one image target.

Everything a target needs on a cluster is read from images/targets.toml (its image, provider
chain, device resource, preferred node labels), so a target is described once for images and
deployments alike.
"""
