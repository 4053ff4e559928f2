"""The one way every stage reuses finished work: a JSON completion record with the inputs' fingerprint."""

import json

from paddle_asr.artifacts import done_marker, fingerprint, is_complete, mark_complete, read_record, reuse_or_clear


def test_file_output_record_sits_beside_it_and_is_written_last(tmp_path):
    out, logs = tmp_path / "lm.arpa", []
    fp = fingerprint("lm", 5, "settings")
    assert not reuse_or_clear(out, fp, "build-lm", False, logs.append) and not logs  # nothing there yet
    out.write_text("arpa")
    assert not is_complete(out, fp)  # killed before the record: a re-run does not trust it
    mark_complete(out, fp, order=5)
    assert done_marker(out) == tmp_path / "lm.arpa.done"
    assert json.loads(done_marker(out).read_text()) == {"fingerprint": fp, "order": 5} == read_record(out)
    assert reuse_or_clear(out, fp, "build-lm", False, logs.append)
    assert logs[-1].startswith(f"build-lm: reusing the complete output in {out}")
    assert not reuse_or_clear(out, fingerprint("lm", 4, "settings"), "build-lm", False, logs.append)
    assert "rebuilding" in logs[-1] and not out.exists() and not done_marker(out).exists()


def test_directory_outputs_are_reused_together_or_rebuilt_whole(tmp_path):
    dirs, logs = [tmp_path / "test_ctc", tmp_path / "test_attention"], []
    for d in dirs:
        d.mkdir()
        (d / "text").write_text("hyp")
    mark_complete(dirs[0], "fp")  # the second never finished
    assert done_marker(dirs[0]) == dirs[0] / ".done"
    assert not reuse_or_clear(dirs, "fp", "stage 3", False, logs.append, noun="result")
    assert not any(d.exists() for d in dirs) and len(logs) == 2
    for d in dirs:
        d.mkdir()
        mark_complete(d, "fp")
    assert reuse_or_clear(dirs, "fp", "stage 3", False, logs.append, noun="result")
    assert not reuse_or_clear(dirs, "fp", "stage 3", True, logs.append) and "(forced)" in logs[-1]


def test_verify_checks_more_than_the_fingerprint(tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    (out / "a.tar").write_bytes(b"x" * 10)
    mark_complete(out, "fp", bytes=10)

    def whole(path, record):
        return (path / "a.tar").stat().st_size == record["bytes"]

    assert reuse_or_clear(out, "fp", "stage 0", False, print, verify=whole)
    (out / "a.tar").write_bytes(b"x" * 3)  # truncated
    assert not reuse_or_clear(out, "fp", "stage 0", False, print, verify=whole) and not out.exists()


def test_a_missing_input_file_is_named_not_a_traceback(tmp_path):
    import pytest

    from paddle_asr.errors import AsrError

    with pytest.raises(AsrError, match=f"{tmp_path / 'nope.list'} does not exist: it is an input of this step"):
        fingerprint("step-v1", tmp_path / "nope.list")
