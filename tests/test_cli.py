"""The command line on the demo model: generate streams an answer; chat keeps a conversation;
bad input is a clear error, not a traceback."""

import subprocess
import sys

import pytest


def qwq(*args, stdin=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "qwq.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_generate_answers_with_the_demo_model():
    r = qwq("generate", "What is the capital of France? Answer in one word.",
            "--temperature", "0", "--max-new-tokens", "16")
    assert r.returncode == 0, r.stderr
    assert "paris" in r.stdout.lower()


@pytest.mark.slow
def test_chat_keeps_the_conversation():
    r = qwq("chat", "--temperature", "0", "--max-new-tokens", "24", "--system",
            "You answer briefly.",
            stdin="My name is Alice. Say hi to me.\nWhat is my name?\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert "alice" in r.stdout.lower().split(">>>")[-1] or r.stdout.lower().count("alice") >= 2


def test_bad_model_is_a_clear_error(tmp_path):
    r = qwq("generate", "hi", "--model", str(tmp_path / "nope"))
    assert r.returncode == 2
    assert "not found" in r.stderr and "Traceback" not in r.stderr


def test_bad_sampling_value_is_a_clear_error():
    r = qwq("generate", "hi", "--temperature", "-1")
    assert r.returncode == 2 and "temperature" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_quantize_flag_picks_the_weight_format():
    """--quantize int8 runs weight-only int8 (16-bit activations on torch's int8pack kernel);
    the answer is still right."""
    r = qwq("generate", "What is the capital of France? Answer in one word.", "--quantize",
            "int8", "--temperature", "0", "--max-new-tokens", "16")
    assert r.returncode == 0, r.stderr
    assert "paris" in r.stdout.lower()


def test_bad_quantize_is_a_clear_error():
    r = qwq("generate", "hi", "--quantize", "int3")
    assert r.returncode == 2 and "int3" in r.stderr and "Traceback" not in r.stderr
