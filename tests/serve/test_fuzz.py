"""A bounded schemathesis run over /openapi.json: whatever it sends, no 5xx (the server keeps answering)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from serve_helpers import API_KEY, app_server, env

from llavakit.serve.app import ServeConfig, create_app


def test_openapi_fuzz_finds_no_server_error(pipe, tmp_path: Path) -> None:  # noqa: ANN001
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if st is None:
        pytest.skip("schemathesis is not installed (it is in the [dev] extra)")
    # few new tokens per request: the fuzzer's valid requests cost little; 4 images at most, 1 Mpx each
    config = ServeConfig(model_name="tiny-llava", api_key=API_KEY, max_tokens=4, default_max_tokens=4)
    app = create_app(pipe, config)
    with app_server(app) as url:
        cmd = [
            st,
            "run",
            f"{url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "8",
            "--seed",
            "1",
            "--header",
            f"Authorization: Bearer {API_KEY}",
            "--workers",
            "1",
            "--request-timeout",
            "60",
            "--max-time",
            "15",
            "--phases",
            "coverage,fuzzing",
        ]
        out = subprocess.run(cmd, env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
        assert "passed" in out.stdout
        # and it still answers
        body = {"model": "tiny-llava", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        auth = {"Authorization": f"Bearer {API_KEY}"}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        statuses = {
            line.split('"')[1]
            for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines()
            if line.startswith("llava_requests_total{")
        }
        assert statuses and not any(s.startswith("5") for s in statuses), statuses
