"""Tests of mmlib.probe: recording, comparing, saving and loading per-layer summaries."""

import io
import warnings

import pytest
import torch
from torch import nn

from mmlib.deterministic import set_deterministic
from mmlib.errors import IntegrityError
from mmlib.probe import ProbeInfo, ProbeSummary, probe_inference, probe_training
from mmlib.probe.graph import edges_to_inputs, sequence_marker
from mmlib.util.hash import tensor_hash

pytestmark = pytest.mark.filterwarnings("ignore:probing records:UserWarning")

ALL_FIELDS = list(ProbeInfo)


def tiny_model() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def tiny_input() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8)


class SharedActivation(nn.Module):
    """Calls one activation module twice and feeds one tensor to two layers (no in-place ops)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.act = nn.Tanh()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.a(x))
        return self.head(self.act(self.b(hidden)) + hidden)


class ResidualBlock(nn.Module):
    """Convolution, residual add and ReLU; the add and ReLU in place by default, like a ResNet BasicBlock."""

    def __init__(self, in_place: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=in_place)
        self.in_place = in_place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.in_place:
            out += x
        else:
            out = out + x
        return self.relu(out)


class Branches(nn.ModuleDict):
    """A ModuleDict with a forward: a container that is neither Sequential nor ModuleList, so it is recorded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.values())


class BlockModel(nn.Module):
    """A Sequential stem, a residual block, a ModuleDict container and ModuleList heads."""

    def __init__(self, in_place: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=in_place))
        self.block = ResidualBlock(in_place)
        self.pool = Branches({"tanh": nn.Tanh(), "sigmoid": nn.Sigmoid()})
        self.heads = nn.ModuleList([nn.Flatten(), nn.Linear(4 * 8 * 8, 3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block(self.stem(x)))
        for head in self.heads:
            x = head(x)
        return x


# forward indices as the original numbers them: a call gets its index when it finishes
BLOCK_MODEL_CALLS = [("stem.0", 1), ("stem.1", 2), ("block.conv", 3), ("block.relu", 4), ("block", 5),
                     ("pool.tanh", 6), ("pool.sigmoid", 7), ("pool", 8), ("heads.0", 9), ("heads.1", 10)]
BLOCK_MODEL_LEAVES = ["stem.0", "stem.1", "block.conv", "block.relu", "pool.tanh", "pool.sigmoid", "heads.0",
                      "heads.1"]


def block_input() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8)


def dropout_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.Linear(16, 2))


def train_probe(model: nn.Module, inp: torch.Tensor, target: torch.Tensor) -> ProbeSummary:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return probe_training(model, inp, optimizer, nn.CrossEntropyLoss(), target)


def deterministic_training_summary() -> ProbeSummary:
    set_deterministic()
    model = tiny_model()
    return train_probe(model, tiny_input(), torch.tensor([0, 2]))


def test_empty_summaries_are_equal():
    assert ProbeSummary() == ProbeSummary()
    assert ProbeSummary().first_divergence(ProbeSummary()) is None


def test_same_model_and_input_give_equal_inference_summaries():
    model, inp = tiny_model(), tiny_input()
    first, second = probe_inference(model, inp), probe_inference(model, inp)
    assert first == second
    assert second == first
    assert list(first.summary) == ["0", "1", "2", "3"]
    assert first.summary["0"][ProbeInfo.LAYER_NAME] == "Conv2d"
    assert first.summary["0"][ProbeInfo.INPUT_SHAPE] == [[2, 3, 8, 8]]
    assert first.summary["3"][ProbeInfo.OUTPUT_SHAPE] == [[2, 3]]
    assert [info[ProbeInfo.FORWARD_INDEX] for info in first.summary.values()] == [1, 2, 3, 4]
    assert ProbeInfo.GRAD_INPUT_TENSOR not in first.summary["0"]


def test_different_models_differ():
    inp = tiny_input()
    assert probe_inference(tiny_model(), inp) != probe_inference(tiny_model(), inp)


def test_training_summaries_equal_only_when_deterministic():
    torch.manual_seed(1)
    first = train_probe(tiny_model(), tiny_input(), torch.tensor([0, 2]))
    second = train_probe(tiny_model(), tiny_input(), torch.tensor([0, 2]))
    assert first != second
    assert deterministic_training_summary() == deterministic_training_summary()


def test_training_records_forward_and_backward_fields():
    summary = deterministic_training_summary()
    assert set(summary.summary["3"]) == set(ALL_FIELDS)
    assert [summary.summary[key][ProbeInfo.BACKWARD_INDEX] for key in ["3", "2", "1", "0"]] == [1, 2, 3, 4]
    assert summary.summary["3"][ProbeInfo.GRAD_OUTPUT_SHAPE] == [[2, 3]]
    assert summary.summary["0"][ProbeInfo.GRAD_INPUT_TENSOR] == ()  # the input image needs no gradient
    linear_grad_in = summary.summary["3"][ProbeInfo.GRAD_INPUT_TENSOR][0]
    flatten_grad_out = summary.summary["2"][ProbeInfo.GRAD_OUTPUT_TENSOR][0]
    assert torch.equal(linear_grad_in, flatten_grad_out)


def test_gradients_match_full_backward_hooks():
    set_deterministic()
    model = SharedActivation()
    reference = SharedActivation()
    reference.load_state_dict(model.state_dict())
    inp = torch.randn(3, 4, requires_grad=True)
    fired = {}
    for name, module in reference.named_children():
        module.register_full_backward_hook(
            lambda _module, grad_in, grad_out, name=name: fired.setdefault(name, []).append((grad_in, grad_out)))
    reference(inp).sum().backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    summary = probe_training(model, inp, optimizer, lambda output, _target: output.sum(), None)

    # full backward hooks fire in backward order, so the second call of `act` fires first
    expected = {"a": fired["a"][0], "b": fired["b"][0], "head": fired["head"][0],
                "act#0": fired["act"][1], "act#1": fired["act"][0]}
    assert set(summary.summary) == set(expected)
    for key, (grad_in, grad_out) in expected.items():
        recorded = summary.summary[key]
        assert len(recorded[ProbeInfo.GRAD_INPUT_TENSOR]) == 1
        assert torch.allclose(recorded[ProbeInfo.GRAD_INPUT_TENSOR][0], grad_in[0], rtol=0, atol=1e-7)
        assert torch.allclose(recorded[ProbeInfo.GRAD_OUTPUT_TENSOR][0], grad_out[0], rtol=0, atol=1e-7)


def test_save_and_load_give_an_equal_summary(tmp_path):
    summary = deterministic_training_summary()
    path = tmp_path / "summary.pt"
    summary.save(path)

    loaded = ProbeSummary()
    loaded.load(path)
    assert loaded == summary
    assert ProbeSummary(path) == summary
    assert ProbeSummary(str(path)) == summary
    assert loaded.first_divergence(summary) is None

    raw = torch.load(path, weights_only=True)
    layer = raw["layers"]["0"]
    assert all(isinstance(name, str) for name in layer)
    assert layer["LAYER_NAME"] == "Conv2d"


def test_loading_a_foreign_file_raises_value_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(ValueError, match="not a probe summary"):
        ProbeSummary(path)


def test_loading_a_damaged_file_raises_integrity_error_that_says_what_to_do(tmp_path):
    path = tmp_path / "summary.pt"
    deterministic_training_summary().save(path)
    data = path.read_bytes()
    damaged = {
        "truncated": (data[:len(data) // 2], "torch.load fails"),
        "empty": (b"", "torch.load fails"),
        "garbage": (b"not a zip archive" * 10, "torch.load fails"),
    }
    for name, (content, reason) in damaged.items():
        (tmp_path / name).write_bytes(content)
    malformed = {
        "layers_not_dicts": ({"format": "mmlib.probe_summary/2", "layers": {"0": [1, 2]}}, "'layers' entry"),
        "no_layers": ({"format": "mmlib.probe_summary/2"}, "'layers' entry"),
        "unknown_field": ({"format": "mmlib.probe_summary/2", "layers": {"0": {"COLOUR": 1}}}, "'COLOUR'"),
        "foreign": ({"weights": torch.ones(2)}, "not a probe summary"),
    }
    for name, (payload, reason) in malformed.items():
        torch.save(payload, tmp_path / name)
    for name, (_, reason) in {**damaged, **malformed}.items():
        with pytest.raises(IntegrityError, match=reason) as raised:
            ProbeSummary(tmp_path / name)
        assert "save the summary again" in str(raised.value), name
        assert isinstance(raised.value, ValueError)  # callers catching the former ValueError still do
    with pytest.raises(FileNotFoundError):
        ProbeSummary(tmp_path / "missing.pt")


def test_in_place_relu_does_not_change_recorded_conv_output():
    summary = probe_inference(tiny_model(), tiny_input())
    conv_output = summary.summary["0"][ProbeInfo.OUTPUT_TENSOR][0]
    relu_input = summary.summary["1"][ProbeInfo.INPUT_TENSOR][0]
    relu_output = summary.summary["1"][ProbeInfo.OUTPUT_TENSOR][0]
    assert (conv_output < 0).any()
    assert torch.equal(relu_input, conv_output)
    assert not (relu_output < 0).any()
    assert torch.equal(relu_output, conv_output.clamp(min=0))


def test_in_place_relu_works_in_training():
    summary = deterministic_training_summary()
    assert (summary.summary["0"][ProbeInfo.OUTPUT_TENSOR][0] < 0).any()
    relu_grad_in = summary.summary["1"][ProbeInfo.GRAD_INPUT_TENSOR][0]
    relu_grad_out = summary.summary["1"][ProbeInfo.GRAD_OUTPUT_TENSOR][0]
    conv_output = summary.summary["0"][ProbeInfo.OUTPUT_TENSOR][0]
    assert torch.equal(relu_grad_in, relu_grad_out * (conv_output > 0))


def test_layer_called_twice_gets_two_keys():
    summary = probe_inference(SharedActivation(), torch.randn(3, 4))
    assert list(summary.summary) == ["a", "act#0", "b", "act#1", "head"]
    assert summary.has_layer_key("act#1")
    assert not summary.has_layer_key("act")
    assert summary.summary["act#1"][ProbeInfo.LAYER_ID] == "act"


def test_forward_indices_limit_recording_and_warn_without_them():
    model, inp = tiny_model(), tiny_input()
    partial = probe_inference(model, inp, forward_indices=[1, 3])
    assert list(partial.summary) == ["0", "2"]
    with pytest.warns(UserWarning, match="memory"):
        probe_inference(model, inp)
    with pytest.raises(TypeError):
        probe_inference(model, inp, forward_indices=["1"])


def test_hooks_are_removed_also_after_an_exception():
    model = tiny_model()
    probe_inference(model, tiny_input())
    with pytest.raises(RuntimeError):
        probe_inference(model, torch.randn(2, 5, 8, 8))
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks


def test_first_divergence_names_the_diverging_layer():
    set_deterministic()
    model, inp = tiny_model(), tiny_input()
    reference = probe_inference(model, inp)
    with torch.no_grad():
        model[3].bias += 1
    assert reference.first_divergence(probe_inference(model, inp)) == ("3", ProbeInfo.OUTPUT_TENSOR)
    assert reference.first_divergence(reference) is None

    set_deterministic()
    model = tiny_model()
    first = train_probe(model, inp, torch.tensor([0, 2]))
    set_deterministic()
    model2 = tiny_model()
    second = train_probe(model2, inp, torch.tensor([1, 2]))
    assert first != second
    # forward passes agree; the gradient diverges first at the layer next to the loss
    assert first.first_divergence(second) == ("3", ProbeInfo.GRAD_OUTPUT_TENSOR)


def test_compare_to_prints_plain_same_and_diff_when_not_a_terminal(capsys):
    model, inp = tiny_model(), tiny_input()
    reference = probe_inference(model, inp)
    with torch.no_grad():
        model[3].bias += 1
    changed = probe_inference(model, inp)
    reference.compare_to(changed, [ProbeInfo.LAYER_NAME], [ProbeInfo.INPUT_TENSOR, ProbeInfo.OUTPUT_TENSOR])
    out = capsys.readouterr().out
    assert "\033[" not in out
    lines = out.splitlines()
    assert lines[0].split() == ["layer", "layer_name", "input_tensor", "output_tensor"]
    assert lines[1].split() == ["0", "Conv2d", "same", "same"]
    assert lines[4].split() == ["3", "Linear", "same", "diff"]


def test_compare_to_colours_cells_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    monkeypatch.delenv("NO_COLOR", raising=False)
    summary = probe_inference(tiny_model(), tiny_input())
    summary.compare_to(ProbeSummary(), [ProbeInfo.LAYER_NAME], [ProbeInfo.OUTPUT_TENSOR])
    summary.compare_to(summary, [], [ProbeInfo.OUTPUT_TENSOR])
    out = terminal.getvalue()
    assert "\033[31mdiff\033[0m" in out
    assert "\033[32msame\033[0m" in out


def test_print_summary_prints_one_row_per_layer(capsys):
    summary = probe_inference(tiny_model(), tiny_input())
    summary.print_summary([ProbeInfo.LAYER_NAME, ProbeInfo.OUTPUT_SHAPE, ProbeInfo.OUTPUT_TENSOR])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    assert lines[4].startswith("3") and "Linear" in lines[4] and "[[2, 3]]" in lines[4]
    with pytest.raises(TypeError):
        summary.print_summary(["layer_name"])


def test_print_summary_shows_tensors_by_their_mmlib_digest(capsys):
    summary = probe_inference(tiny_model(), tiny_input())
    summary.print_summary([ProbeInfo.OUTPUT_TENSOR])
    last_row = capsys.readouterr().out.splitlines()[4]
    output = summary.summary["3"][ProbeInfo.OUTPUT_TENSOR][0]
    assert last_row.split() == ["3", f"(#{tensor_hash(output)[:8]})"]


def test_autograd_sequence_numbers_grow_in_creation_order():
    """The probe tells the autograd nodes a layer call created by torch's private Node._sequence_nr() (see
    mmlib.probe.graph); this fails when torch removes it or stops numbering nodes in creation order."""
    marker_leaf = torch.zeros((), requires_grad=True)
    inp, weight = torch.randn(3, 3, requires_grad=True), torch.randn(3, 3, requires_grad=True)
    before = torch.tanh(inp)
    assert hasattr(before.grad_fn, "_sequence_nr"), "torch removed Node._sequence_nr(): update mmlib.probe.graph"
    marker = sequence_marker(marker_leaf)
    during = (before @ weight).relu()
    matmul = during.grad_fn.next_functions[0][0]
    numbers = [before.grad_fn._sequence_nr(), marker, matmul._sequence_nr(), during.grad_fn._sequence_nr()]
    assert numbers == sorted(set(numbers)), f"autograd no longer numbers nodes in creation order: {numbers}"
    # the walk from the call's output stops at its input and finds the node that passes gradient to it
    found = edges_to_inputs([during.grad_fn], {(id(before.grad_fn), 0): 0}, marker)
    assert [(node, routes) for node, routes in found] == [(matmul, [(0, 0)])]


def test_add_attribute_builds_a_summary_by_hand():
    summary = ProbeSummary()
    summary.add_attribute("fc", ProbeInfo.FORWARD_INDEX, 0)
    summary.add_attribute("fc", ProbeInfo.OUTPUT_TENSOR, (torch.ones(2),))
    other = ProbeSummary()
    other.add_attribute("fc", ProbeInfo.FORWARD_INDEX, 0)
    other.add_attribute("fc", ProbeInfo.OUTPUT_TENSOR, (torch.ones(2),))
    assert summary == other and summary.has_layer_key("fc")
    other.add_attribute("fc", ProbeInfo.OUTPUT_TENSOR, (torch.zeros(2),))
    assert summary != other
    assert summary.first_divergence(other) == ("fc", ProbeInfo.OUTPUT_TENSOR)
    with pytest.raises(TypeError):
        summary.add_attribute("fc", "output_tensor", 1)


def test_inference_probe_switches_to_eval_mode_so_dropout_probes_are_equal():
    torch.manual_seed(0)
    model, inp = dropout_model(), torch.randn(4, 8)
    assert model.training
    first, second = probe_inference(model, inp), probe_inference(model, inp)
    assert first == second
    dropout = first.summary["1"]
    assert torch.equal(dropout[ProbeInfo.OUTPUT_TENSOR][0], dropout[ProbeInfo.INPUT_TENSOR][0])
    # like the original, the probe leaves the model in the mode it set
    assert not any(module.training for module in model.modules())


def test_training_probe_switches_an_eval_model_to_train_mode():
    torch.manual_seed(0)
    model = dropout_model().eval()
    summary = train_probe(model, torch.randn(4, 8), torch.tensor([0, 1, 0, 1]))
    dropout = summary.summary["1"]
    assert not torch.equal(dropout[ProbeInfo.OUTPUT_TENSOR][0], dropout[ProbeInfo.INPUT_TENSOR][0])
    assert all(module.training for module in model.modules())


def test_indices_count_from_one_so_forward_indices_select_as_in_the_original():
    model, inp = tiny_model(), tiny_input()
    everything = probe_inference(model, inp)
    assert everything.summary["0"][ProbeInfo.FORWARD_INDEX] == 1
    first_only = probe_inference(model, inp, forward_indices=[1])
    assert list(first_only.summary) == ["0"]
    assert first_only.summary["0"][ProbeInfo.FORWARD_INDEX] == 1
    assert first_only.first_divergence(probe_inference(model, inp, forward_indices=[1])) is None

    training = deterministic_training_summary()
    backward_indices = sorted(info[ProbeInfo.BACKWARD_INDEX] for info in training.summary.values())
    assert backward_indices == [1, 2, 3, 4]
    assert training.summary["3"][ProbeInfo.BACKWARD_INDEX] == 1


def test_records_blocks_and_their_layers_but_not_sequential_module_list_or_the_model():
    summary = probe_inference(BlockModel(), block_input())
    assert [(key, info[ProbeInfo.FORWARD_INDEX]) for key, info in summary.summary.items()] == BLOCK_MODEL_CALLS
    assert summary.summary["block"][ProbeInfo.LAYER_NAME] == "ResidualBlock"
    assert summary.summary["pool"][ProbeInfo.LAYER_NAME] == "Branches"
    assert not any(summary.has_layer_key(key) for key in ["", "stem", "heads"])
    block_input_copy = summary.summary["block"][ProbeInfo.INPUT_TENSOR][0]
    assert torch.equal(block_input_copy, summary.summary["stem.1"][ProbeInfo.OUTPUT_TENSOR][0])
    # `out += x` changed the convolution's output after it was recorded
    residual_sum = summary.summary["block.conv"][ProbeInfo.OUTPUT_TENSOR][0] + block_input_copy
    assert torch.equal(summary.summary["block.relu"][ProbeInfo.INPUT_TENSOR][0], residual_sum)
    assert torch.equal(summary.summary["block"][ProbeInfo.OUTPUT_TENSOR][0], residual_sum.clamp(min=0))


def test_forward_indices_select_a_block_or_one_of_its_layers():
    model, inp = BlockModel(), block_input()
    everything = probe_inference(model, inp)
    only_block = probe_inference(model, inp, forward_indices=[5])
    assert list(only_block.summary) == ["block"]
    expected = ProbeSummary()
    expected.summary["block"] = everything.summary["block"]
    assert only_block == expected
    assert list(probe_inference(model, inp, forward_indices=[3, 8]).summary) == ["block.conv", "pool"]


def test_first_divergence_names_the_layer_inside_a_block():
    set_deterministic()
    model, inp = BlockModel(), block_input()
    reference = probe_inference(model, inp)
    with torch.no_grad():
        model.block.conv.bias += 1
    assert reference.first_divergence(probe_inference(model, inp)) == ("block.conv", ProbeInfo.OUTPUT_TENSOR)


def test_leaf_only_records_only_modules_without_children():
    model, inp = BlockModel(), block_input()
    leaves = probe_inference(model, inp, leaf_only=True)
    assert list(leaves.summary) == BLOCK_MODEL_LEAVES
    assert [info[ProbeInfo.FORWARD_INDEX] for info in leaves.summary.values()] == list(range(1, 9))
    assert list(probe_inference(model, inp, None, [5], leaf_only=True).summary) == ["pool.tanh"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trained = probe_training(model, inp, optimizer, nn.CrossEntropyLoss(), torch.tensor([0, 2]), leaf_only=True)
    assert list(trained.summary) == BLOCK_MODEL_LEAVES


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")  # the reference's first conv
def test_gradients_of_blocks_with_in_place_ops_match_full_backward_hooks():
    set_deterministic()
    model = BlockModel(in_place=True)
    reference = BlockModel(in_place=False)
    reference.load_state_dict(model.state_dict())
    inp, target = block_input(), torch.tensor([0, 2])
    fired = {}
    recorded_keys = [key for key, _ in BLOCK_MODEL_CALLS]
    for key in recorded_keys:
        reference.get_submodule(key).register_full_backward_hook(
            lambda _module, grad_in, grad_out, key=key: fired.update({key: (grad_in, grad_out)}))
    nn.CrossEntropyLoss()(reference(inp), target).backward()
    summary = train_probe(model, inp, target)

    assert set(summary.summary) == set(fired) == set(recorded_keys)
    assert sorted(info[ProbeInfo.BACKWARD_INDEX] for info in summary.summary.values()) == list(range(1, 11))
    for key, (grad_in, grad_out) in fired.items():
        recorded = summary.summary[key]
        expected_in = [grad for grad in grad_in if grad is not None]
        assert len(recorded[ProbeInfo.GRAD_INPUT_TENSOR]) == len(expected_in), key
        for got, expected in zip(recorded[ProbeInfo.GRAD_INPUT_TENSOR], expected_in):
            assert torch.allclose(got, expected, rtol=0, atol=1e-6), key
        assert torch.allclose(recorded[ProbeInfo.GRAD_OUTPUT_TENSOR][0], grad_out[0], rtol=0, atol=1e-6), key
    assert summary.summary["stem.0"][ProbeInfo.GRAD_INPUT_TENSOR] == ()  # the input image needs no gradient


def test_saved_format_is_2_and_format_1_files_load_with_indices_from_one(tmp_path):
    summary = deterministic_training_summary()
    path = tmp_path / "summary.pt"
    summary.save(path)
    assert torch.load(path, weights_only=True)["format"] == "mmlib.probe_summary/2"

    zero_based = {key: {field.name: value - 1 if field in (ProbeInfo.FORWARD_INDEX, ProbeInfo.BACKWARD_INDEX)
                        else value for field, value in info.items()}
                  for key, info in summary.summary.items()}
    old_path = tmp_path / "old.pt"
    torch.save({"format": "mmlib.probe_summary/1", "layers": zero_based}, old_path)
    old = ProbeSummary(old_path)
    assert old == summary
    assert old.summary["0"][ProbeInfo.FORWARD_INDEX] == 1


def test_a_childless_module_that_runs_other_layers_warns_when_selected_but_not_recorded():
    class Caller(nn.Module):
        """Has no children but calls a module registered elsewhere in the model."""

        def __init__(self, callee: nn.Module) -> None:
            super().__init__()
            self.callees = (callee,)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.callees[0](x) + 1

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 4)
            self.caller = Caller(self.linear)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.caller(x)

    model, inp = Model(), torch.randn(2, 4)
    assert [(key, info[ProbeInfo.FORWARD_INDEX]) for key, info in probe_inference(model, inp).summary.items()] == [
        ("linear", 1), ("caller", 2)]
    with pytest.warns(UserWarning, match="caller"):
        selected = probe_inference(model, inp, forward_indices=[2])
    assert list(selected.summary) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(probe_inference(model, inp, forward_indices=[1]).summary) == ["linear"]
