"""soulray.llm is what the rewrite and the evaluation build on, so it must not import either of them
(issue 19: the local server imported the evaluation while the evaluation imported the rewrite stage)."""

from __future__ import annotations

import subprocess
import sys


def test_llm_imports_neither_rewrite_nor_evaluate():
    # a fresh interpreter: this test session has imported everything already
    code = ("import sys, soulray.llm.broker, soulray.llm.cache, soulray.llm.client, soulray.llm.pricing, "
            "soulray.llm.session, soulray.llm.tokens; "
            "print(sorted(m for m in sys.modules if m.startswith(('soulray.rewrite', 'soulray.evaluate'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
