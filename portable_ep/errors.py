"""Errors the CLI reports as one line rather than a traceback."""
from portable_ep.backends.artifacts import ModelFilesNotFound
from portable_ep.backends.bundle_paths import BundlePathError
from portable_ep.backends.integrity import IntegrityError
from portable_ep.deploy.model_source import DeployError
from portable_ep.exporters.errors import ExportError, one_line  # noqa: F401  (one_line re-exported)
from portable_ep.python_backend.install import BackendInstallError
from portable_ep.supervisor import SupervisorError
from portable_ep.triton_install import TritonNotFound
from portable_ep.images.targets import TargetsError
from portable_ep.triton_process import TritonServerError

USER_ERRORS = (TritonNotFound, TritonServerError, BackendInstallError, ModelFilesNotFound, ExportError, FileNotFoundError,
               FileExistsError, SupervisorError, TargetsError, DeployError,
               BundlePathError, IntegrityError)
