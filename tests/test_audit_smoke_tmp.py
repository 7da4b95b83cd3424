from pathlib import Path
from gateway.verify import verify_bundle
from tests.test_audit_support import audited_runtime, scenario, export, read_bundle
from tests.conftest import client_for

async def test_smoke(dsn, tmp_path: Path):
    rt = await audited_runtime(dsn, tmp_path)
    try:
        async with client_for(rt) as client:
            sc = await scenario(rt, client)
        result = await export(rt, tmp_path / "b.zip", sc.vendor_id)
        print(result.to_json())
        files = read_bundle(tmp_path / "b.zip")
        print(files["manifest.json"].decode())
        print(files["events.jsonl"].decode()[:1500])
        v = verify_bundle(tmp_path / "b.zip")
        print(v.line())
        assert v.ok
        (tmp_path / "report.html").write_bytes(files["report.html"])
        import shutil; shutil.copy(tmp_path / "report.html", "/tmp/smoke/report.html")
    finally:
        await rt.close()
