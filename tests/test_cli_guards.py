"""CLI guards that need no cluster: a model exposed beyond loopback without API keys is refused
before Ray starts; --help and --version answer without loading torch or Ray."""

from __future__ import annotations

import pytest

from modelfoundry.cli import main

ROOT_APPS = "serve_apps/classifier.yaml"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "myhost.example"])
def test_serve_off_loopback_without_keys_is_refused(capsys, tmp_path, host):
    assert main(["serve", "cnn-digits", "--store", str(tmp_path), "--host", host]) == 2
    err = capsys.readouterr().err
    assert f"--host {host} exposes the model" in err and "--api-keys-env NAME" in err and "--insecure" in err
    assert main(["serve", ROOT_APPS, "--host", host]) == 2  # a serve YAML whose apps set no keys


@pytest.mark.parametrize(
    "extra",
    [["--insecure"], ["--api-keys-env", "MY_KEYS"], ["--api-keys-file", "keys.txt"], ["--host", "127.0.0.1"], []],
)
def test_keys_insecure_or_loopback_pass_the_guard(capsys, tmp_path, extra):
    args = ["serve", "cnn-digits", "--store", str(tmp_path)]
    args += extra if "--host" in extra or not extra else ["--host", "0.0.0.0", *extra]
    assert main(args) == 2  # the next check fails: the store is empty, so Ray never starts
    err = capsys.readouterr().err
    assert "is not in the store" in err and "exposes the model" not in err


@pytest.mark.parametrize(
    "argv", [["--help"], ["--version"], ["train", "--help"], ["serve", "--help"], ["tune", "--help"]]
)
def test_help_and_version_answer_without_loading_torch_or_ray(argv):
    """A fresh interpreter: what `foundry --help` imports is what the user waits for."""
    import subprocess
    import sys

    probe = "\n".join(
        [
            "import sys",
            "from modelfoundry.cli import main",
            "try:",
            f"    main({argv!r})",
            "except SystemExit as e:",
            "    assert not e.code, e.code",
            "print('LOADED', sorted(m for m in ('torch', 'ray') if m in sys.modules))",
        ]
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout, out.stdout[-500:]
    assert ("foundry " in out.stdout) if argv == ["--version"] else ("usage: foundry" in out.stdout)


def test_every_subcommand_has_a_description_and_an_example(capsys):
    from modelfoundry.cli import ABOUT, build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) | {"models list", "models show", "models alias"} == set(ABOUT)
    for name in ABOUT:
        with pytest.raises(SystemExit):
            main([*name.split(), "--help"])
        out = capsys.readouterr().out
        description, example = ABOUT[name]
        assert description.split()[0] in out and (not example or f"example: {example}" in " ".join(out.split()))
        assert not example or example.startswith("foundry " + name.split()[0])


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--max-replicas-total", "3"], "--max-replicas-total apply with --slo-p99-ms"),
        (["--variant", "@fast", "--min-replicas", "0"], "--min-replicas, --variant apply with --slo-p99-ms"),
        (["--slo-p99-ms", "50"], "slo applies to a split model app"),
        (["--split", "auto", "--slo-p99-ms", "0"], "slo.p99_ms"),
        (["--split", "auto", "--slo-p99-ms", "50", "--min-replicas", "-1"], "slo.min_replicas"),
    ],
)
def test_latency_objective_flags_are_checked_before_ray_starts(capsys, tmp_path, extra, words):
    assert main(["serve", "cnn-digits", "--store", str(tmp_path), *extra]) == 2
    assert words in capsys.readouterr().err
