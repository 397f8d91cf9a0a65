"""Bad input to the exporter (tools/deploy/export_model.py main(argv), in this process) and to the runtime: each a
clear error naming the file or value and the fix, nothing left behind.

Exporter: weights of another architecture, an unknown --format, an existing --output (refused without --overwrite,
replaced with it), --precision int8 with TorchScript, a graph that disagrees with eager PyTorch (ExportCheckError).
Runtime: a damaged graph file (ONNX, TorchScript), a missing model.json or graph file, a fixed-shape graph given
another size.
"""
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from hrda_d2.export import exporter
from hrda_d2_deploy import ExportedModel, ExportedModelError
from hrda_d2_deploy.runtime import MANIFEST
from tests.deploy.exports import make_batch, write_weights

REEXPORT = "export the model again with tools/deploy/export_model.py"


def _run_tool(exports, argv, capsys):
    """(exit status, stderr) of ``main(argv)``; SystemExit (argparse) gives its code."""
    capsys.readouterr()
    with torch.enable_grad():
        try:
            status = exports.tool.main(argv)
        except SystemExit as e:
            status = e.code
        assert torch.is_grad_enabled(), "main() switched autograd off for the calling process"
    return status, capsys.readouterr().err


def _assert_one_error(err: str, prefix: str):
    """The error output is the tool's message (no traceback) starting with ``prefix``."""
    assert err.startswith(prefix), err
    assert "Traceback" not in err, err


# ------------------------------------------------------------------------------------------------- exporter
def test_weights_of_another_architecture_are_refused_naming_the_file(exports, tmp_path, capsys):
    """A DeepLabV2 (ResNet-50) checkpoint as MODEL.WEIGHTS of the demo HRDA (MiT-b0) config."""
    weights = write_weights("dlv2", tmp_path / "dlv2_model.pth")
    output = tmp_path / "out"
    argv = exports.export_argv("demo_hrda", "onnx", str(output)) + ["MODEL.WEIGHTS", weights]
    status, err = _run_tool(exports, argv, capsys)
    assert status == 1
    _assert_one_error(err, f"export_model: {weights} does not fit the model")
    assert "Use the config the checkpoint was trained with" in err  # the fix
    assert not output.exists() and os.listdir(tmp_path) == ["dlv2_model.pth"]


def test_unknown_format_is_refused_by_the_parser(exports, tmp_path, capsys):
    status, err = _run_tool(exports, exports.export_argv("demo_hrda", "tflite", str(tmp_path / "out")), capsys)
    assert status == 2
    assert err.splitlines()[-1].endswith("error: argument --format: invalid choice: 'tflite' (choose from 'onnx', "
                                         "'torchscript')"), err
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused_without_overwrite(exports, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "mine.txt").write_text("keep me")
    status, err = _run_tool(exports, exports.export_argv("demo_hrda", "onnx", str(output)), capsys)
    assert status == 1
    assert err == (f"export_model: --output {output} exists; pass --overwrite to replace it, or choose another "
                   f"folder\n")
    assert os.listdir(output) == ["mine.txt"]


def test_an_output_file_is_not_replaced(exports, tmp_path, capsys):
    output = tmp_path / "model.onnx"
    output.write_text("keep me")
    status, err = _run_tool(exports, exports.export_argv("daformer", "onnx", str(output), "--overwrite"), capsys)
    assert status == 1
    assert err == (f"export_model: --output {output} is a file, not a folder; --overwrite replaces folders only: "
                   f"choose another path\n")
    assert output.read_text() == "keep me" and os.listdir(tmp_path) == ["model.onnx"]


def test_existing_output_is_replaced_with_overwrite(exports):
    """The session's exports are written with --overwrite over a folder holding stale.txt (tests/deploy/exports.py)."""
    folder = exports.get("demo_hrda", "onnx").folder
    assert sorted(os.listdir(folder)) == ["config.yaml", MANIFEST, "tiles.onnx", "window.onnx"]
    assert not any(name.startswith(".export-") for name in os.listdir(os.path.dirname(folder)))


def test_int8_torchscript_is_refused(exports, tmp_path, capsys):
    output = tmp_path / "out"
    status, err = _run_tool(exports, exports.export_argv("demo_hrda", "torchscript", str(output), "--precision",
                                                         "int8"), capsys)
    assert status == 1
    assert err == ("export_model: --precision int8 is an ONNX option (onnxruntime's fp16 conversion / dynamic int8 "
                   "quantisation); use --format onnx, or --precision fp32 for TorchScript\n")
    assert not output.exists()


class _OffsetWhenTraced(nn.Module):
    """A graph module whose traced (exported) graph adds 1e-2 to every logit; eager PyTorch does not."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.graph = graph

    def forward(self, *inputs):
        out = self.graph(*inputs)
        if torch.jit.is_tracing():  # also true inside torch.onnx.export
            out = out + 1e-2
        return out


def test_a_graph_that_disagrees_with_eager_is_not_written(exports, tmp_path, capsys, monkeypatch):
    """The whole-inference DAFormer's one graph, exported 1e-2 off: ExportCheckError naming the graph and output."""
    graph_modules = exporter.graph_modules

    def offset_graphs(model):
        return {name: _OffsetWhenTraced(graph).eval() for name, graph in graph_modules(model).items()}

    monkeypatch.setattr(exporter, "graph_modules", offset_graphs)
    output = tmp_path / "out"
    status, err = _run_tool(exports, exports.export_argv("daformer", "torchscript", str(output)), capsys)
    assert status == 1
    _assert_one_error(err, "export_model: graph 'whole' output 'logits' differs from eager PyTorch by 0.01 at")
    assert "nothing was written" in err and "--debug" in err  # what happened and where to look
    assert len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == [], "no output folder and no staging folder left"


# --------------------------------------------------------------------------------------------------- runtime
def _copy(folder: str, target: Path, damaged: str = None, content: bytes = None) -> str:
    """A copy of an exported folder (files linked) with file ``damaged`` replaced by ``content``."""
    target.mkdir()
    for name in os.listdir(folder):
        if name == damaged:
            (target / name).write_bytes(content)
        else:
            os.symlink(os.path.join(folder, name), target / name)
    return str(target)


@pytest.mark.parametrize("fmt,file", [("onnx", "tiles.onnx"), ("torchscript", "window.ts")])
@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_a_damaged_graph_file_is_named_with_the_fix(exports, tmp_path, fmt, file, damage):
    folder = exports.get("demo_hrda", fmt).folder
    original = Path(folder, file).read_bytes()
    content = original[:len(original) // 2] if damage == "truncated" else b"\x00not a graph\n" * 64
    copy = _copy(folder, tmp_path / "copy", file, content)
    with pytest.raises(ExportedModelError) as error:
        ExportedModel(copy)
    message = str(error.value)
    assert message.startswith(os.path.join(copy, file) + ": ")
    assert message.endswith(f"the file is damaged or incomplete: {REEXPORT}")
    assert "\n" not in message


def test_a_missing_manifest_is_named_with_the_fix(exports, tmp_path):
    folder = exports.get("demo_hrda", "onnx").folder
    copy = _copy(folder, tmp_path / "copy")
    os.remove(os.path.join(copy, MANIFEST))
    with pytest.raises(ExportedModelError) as error:
        ExportedModel(copy)
    assert str(error.value) == (f"{os.path.join(copy, MANIFEST)}: missing, so {copy} is not an exported model "
                                f"folder; {REEXPORT}")
    with pytest.raises(ExportedModelError, match="no such folder; give the --output folder of "):
        ExportedModel(str(tmp_path / "nowhere"))


def test_a_missing_graph_file_and_a_damaged_manifest_are_named(exports, tmp_path):
    folder = exports.get("demo_hrda", "onnx").folder
    copy = _copy(folder, tmp_path / "copy")
    os.remove(os.path.join(copy, "window.onnx"))
    with pytest.raises(ExportedModelError) as error:
        ExportedModel(copy)
    assert str(error.value).startswith(f"{os.path.join(copy, 'window.onnx')}: missing (graph 'window' of ")
    assert str(error.value).endswith(REEXPORT)
    broken = _copy(folder, tmp_path / "broken", MANIFEST, b'{"version": 1, "format": "onnx"')
    with pytest.raises(ExportedModelError) as error:
        ExportedModel(broken)
    assert str(error.value).startswith(f"{os.path.join(broken, MANIFEST)}: not a readable manifest (")
    assert str(error.value).endswith(REEXPORT)


def _fixed_shape_error(model: ExportedModel, height: int, width: int) -> str:
    with pytest.raises(ExportedModelError) as error:
        model.inference(make_batch(height, width))
    return str(error.value)


def test_a_fixed_shape_graph_refuses_another_size_naming_image_size(exports, tmp_path):
    """The demo HRDA graphs marked fixed-shape (as a ViT's would be): windows of their traced 128 x 128 run, an
    image smaller than one window (windows of 97 x 75) is refused."""
    folder = exports.get("demo_hrda", "onnx").folder
    manifest = json.loads(Path(folder, MANIFEST).read_text())
    for graph in manifest["graphs"].values():
        graph["dynamic"] = False
    copy = _copy(folder, tmp_path / "copy", MANIFEST, json.dumps(manifest).encode())
    model = ExportedModel(copy)
    assert model.inference(make_batch(128, 192)).shape == (1, 19, 128, 192)
    message = _fixed_shape_error(model, 97, 75)
    assert message == (f"{copy}: graph 'window' was exported for 128 x 128 inputs only (its network traces with "
                       f"fixed shapes), this image needs 97 x 75; export again with tools/deploy/export_model.py "
                       f"--image-size H W of the images you will run (after the test rescale)")


@pytest.mark.slow
def test_a_vit_graph_is_fixed_shape_and_refuses_another_size(exports):
    """The tiny VFM-UDA ViT-S/14: its graph traces with fixed shapes; a window smaller than 128 x 128 is refused."""
    exported = exports.get("vfm_uda", "onnx")
    assert {name: g["dynamic"] for name, g in exported.manifest["graphs"].items()} == {"whole": False}
    message = _fixed_shape_error(ExportedModel(exported.folder), 97, 75)
    assert "graph 'whole' was exported for 128 x 128 inputs only" in message and "--image-size H W" in message


def test_a_missing_runtime_is_named_with_what_to_install(monkeypatch, tmp_path):
    from hrda_d2_deploy import runtime

    real = runtime.importlib.import_module

    def refuse(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(runtime.importlib, "import_module", refuse)
    with pytest.raises(runtime.ExportedModelError, match=r"model\.onnx needs onnxruntime, which is not installed here: "
                                                         r"pip install onnxruntime"):
        runtime._onnx_session(str(tmp_path / "model.onnx"), runtime.RuntimeOptions())
