"""Where the pods find the model repository: ``--repository URI``.

Replicas share one read-only repository; it is never written by the server. Schemes:

- ``pvc://CLAIM[/SUBPATH]``: a PersistentVolumeClaim, mounted read-only (ReadOnlyMany or
  ReadWriteMany for more than one node). The default, ``pvc://portable-ep-models``.
- ``hostpath:///ABS/PATH``: a directory on the node (single-node clusters such as kind or
  minikube, and the pod-spec test's bind mount).
- ``oci://IMAGE``: an image carrying the repository at ``/models`` (and a ``cp``); an init
  container copies it into an emptyDir (the "model car" pattern; the image is the version).
- any other URI (``s3://``, ``gs://``, ``https://`` ...): KServe's storage initializer downloads
  it (``--flavor kserve`` only).

A path with a ``..`` component (``pvc://models/../../etc``) is refused for every scheme.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional
from urllib.parse import unquote

DEFAULT_REPOSITORY = "pvc://portable-ep-models"
MOUNT_PATH = "/models"
VOLUME = "model-repository"
MOUNTED_SCHEMES = ("pvc", "hostpath", "oci")


class DeployError(ValueError):
    """A deploy option is wrong: one line naming the fix."""


@dataclass(frozen=True)
class ModelSource:
    uri: str
    scheme: str
    location: str  # claim, host path or image
    subpath: Optional[str] = None

    def volume(self) -> Dict:
        if self.scheme == "pvc":
            return {"name": VOLUME, "persistentVolumeClaim": {"claimName": self.location, "readOnly": True}}
        if self.scheme == "hostpath":
            return {"name": VOLUME, "hostPath": {"path": self.location, "type": "Directory"}}
        return {"name": VOLUME, "emptyDir": {}}

    def mount(self) -> Dict:
        mount = {"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": True}
        if self.subpath:
            mount["subPath"] = self.subpath
        return mount

    def init_containers(self, security_context: Dict) -> List[Dict]:
        """oci:// only: copy the image's /models into the shared emptyDir before the server starts."""
        if self.scheme != "oci":
            return []
        return [{
            "name": "model-repository",
            "image": self.location,
            "command": ["cp", "-R", f"{MOUNT_PATH}/.", "/repository/"],
            "volumeMounts": [{"name": VOLUME, "mountPath": "/repository"}],
            "securityContext": security_context,
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        }]


def parse_model_source(uri: Optional[str], flavor: str) -> ModelSource:
    uri = (uri or DEFAULT_REPOSITORY).strip()
    scheme, sep, rest = uri.partition("://")
    if not sep or not rest.strip("/"):
        raise DeployError(f"--repository {uri!r}: use pvc://CLAIM[/SUBPATH], hostpath:///PATH, oci://IMAGE"
                          " (or, with --flavor kserve, any storageUri such as s3://BUCKET/PATH)")
    scheme = scheme.lower()
    if ".." in unquote(rest).split("/"):
        # A subPath or host path with '..' mounts a folder beside (or above) the repository's: never what is meant.
        raise DeployError(f"--repository {uri!r} refused: '..' in a repository path leaves the folder it names; "
                          "give the repository's own path")
    if scheme == "pvc":
        claim, _, subpath = rest.partition("/")
        return ModelSource(uri, scheme, claim, subpath.strip("/") or None)
    if scheme == "hostpath":
        if not rest.startswith("/"):
            raise DeployError(f"--repository {uri!r}: a host path must be absolute (hostpath:///srv/models)")
        if flavor == "kserve":
            raise DeployError("--repository hostpath:// is not a KServe storageUri: use pvc://, s3://, gs:// or https://")
        return ModelSource(uri, scheme, rest.rstrip("/") or "/")
    if scheme == "oci":
        # For KServe the URI is its own storageUri (KServe's modelcar support), passed through as is.
        return ModelSource(uri, scheme, rest)
    if flavor != "kserve":
        raise DeployError(f"--repository {uri!r}: a plain Deployment mounts pvc://, hostpath:// or oci:// repositories;"
                          " downloads from object storage need --flavor kserve (its storage initializer)")
    return ModelSource(uri, scheme, rest)
