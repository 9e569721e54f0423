"""nn.Embedding's rule, tied parameters, and a size equal to several channel counts (plain torch)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gpd
from helpers import rel_err

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class TextNet(nn.Module):
    """Word and position embeddings summed, an MLP of 16 channels, a mean-pooled head.

    16 positions and 16 channels: the position table's both axes have a channel count's size.
    """

    def __init__(self, padding_idx: int | None = None, max_norm: float | None = None) -> None:
        super().__init__()
        self.words = nn.Embedding(20, 8, padding_idx=padding_idx, max_norm=max_norm)
        self.positions = nn.Embedding(16, 8)
        self.norm = nn.LayerNorm(8)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.words(ids) + self.positions(torch.arange(ids.shape[1])))
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return self.head(h.mean(1))


def ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 20, (3, 16), generator=torch.Generator().manual_seed(seed))


def student(**kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return TextNet(**kwargs).double().eval()  # type: ignore[arg-type]


@pytest.mark.parametrize("layout", ["tiled", "interleaved"])
def test_embeddings_are_tiled_on_embedding_dim(layout: str) -> None:
    model_s, x = student(), ids()
    model = gpd.expand(model_s, 2, example_input=x, layout=layout).eval()
    words = model.dynamic.words
    assert words.weight.shape == (20, 16) and words.embedding_dim == 16
    assert model.dynamic.positions.weight.shape == (16, 16)
    assert rel_err(model.forward_dynamic(x), model_s(x)) <= 1e-12
    assert model.student.slices["words.weight"].paper_scale == 0.5  # writes activations from indices, as a stem


def test_padding_row_gets_no_gradient_in_d() -> None:
    model_s = student(padding_idx=0)
    x = ids()
    x[:, :3] = 0
    model = gpd.expand(model_s, 2, example_input=x).train()
    model.forward_dynamic(x).sum().backward()
    assert bool((model.dynamic.words.weight.grad[0] == 0).all())
    assert bool((model.dynamic.words.weight[0] == 0).all())


def test_max_norm_renormalises_the_same_rows() -> None:
    model_s = student(max_norm=1.0)
    x = ids()
    expected = model_s(x)  # renormalises the student's rows in place, once
    model = gpd.expand(model_s, 2, example_input=x).eval()
    assert model.dynamic.words.max_norm == pytest.approx(2**0.5)
    assert rel_err(model.forward_dynamic(x), expected) <= 1e-12
    with pytest.raises(gpd.ExpansionError, match="unevenly"):
        gpd.expand(student(max_norm=1.0), 1.5, example_input=x)


class LearnedBias(nn.Module):
    """A leaf without a rule adding a (positions, channels) table: 8 positions, 8 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table


class TableNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bias, self.fc2 = nn.Linear(4, 8), LearnedBias(), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bias(self.fc1(x)))).mean(1)


def test_a_coincident_size_is_resolved_by_the_axis_that_meets_the_activation() -> None:
    torch.manual_seed(0)
    model_s = TableNet().double().eval()
    x = torch.randn(2, 8, 4, dtype=torch.float64)
    model = gpd.expand(model_s, 2, example_input=x).eval()
    assert model.dynamic.bias.table.shape == (8, 16)
    assert rel_err(model.forward_dynamic(x), model_s(x)) <= 1e-12


class TiedMiddle(nn.Module):
    """Two middle layers holding one weight: D's tensors are equal at both places, so they stay tied."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.head = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.c.weight = self.b.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))))


def test_equal_tied_tensors_stay_tied_in_d_the_view_and_the_export() -> None:
    torch.manual_seed(0)
    model_s, x = TiedMiddle().double(), torch.randn(5, 4, dtype=torch.float64)
    model = gpd.expand(model_s, 2, example_input=x)
    assert model.dynamic.c.weight is model.dynamic.b.weight
    assert rel_err(model.forward_student(x), model_s(x)) <= 1e-12
    with torch.no_grad():
        model.dynamic.b.weight.add_(0.1)  # the student must read the change at both places
    exported = model.export_student()
    assert exported.c.weight is exported.b.weight
    assert rel_err(model.forward_student(x), exported(x)) <= 1e-12
    TiedMiddle().double().load_state_dict(exported.state_dict(), strict=True)


class TiedHead(nn.Module):
    """The output layer reads the input embeddings (a tied language-model head)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.fc, self.out = nn.Embedding(20, 8), nn.Linear(8, 8), nn.Linear(8, 20, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(self.embed(x))))


def test_tied_tensors_that_d_needs_apart_are_refused_naming_both() -> None:
    torch.manual_seed(0)
    with pytest.raises(gpd.ExpansionError, match=r"'embed\.weight' is tied to 'out\.weight'.*untie them"):
        gpd.expand(TiedHead().double(), 2, example_input=ids())


class ReadTable(nn.Module):
    """Reads an embedding's weight without calling it (DeBERTa's relative embeddings); an aux head is never used."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.table, self.fc2 = nn.Linear(4, 8), nn.Embedding(5, 8), nn.Linear(8, 3)
        self.aux = nn.Linear(8, 3)  # a train-only head: never called on the example

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x)) + self.table.weight.sum(0)
        return self.fc2(h)


def test_a_table_read_without_a_call_is_expanded_first_and_verified() -> None:
    torch.manual_seed(0)
    model_s, x = ReadTable().double().eval(), torch.randn(3, 4, dtype=torch.float64)
    with pytest.warns(UserWarning, match="never called") as caught:
        model = gpd.expand(model_s, 2, example_input=x)
    assert next(str(w.message) for w in caught if "never called" in str(w.message)).count("table") == 0
    assert "aux" in str(caught[0].message)
    assert model.dynamic.table.weight.shape == (5, 16)
    assert rel_err(model.forward_dynamic(x), model_s(x)) <= 1e-12


class TokensLast(nn.Module):
    """A container adding its own (tokens, channels) table: 16 tokens, 16 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 16), nn.Linear(16, 3)
        self.table = nn.Parameter(torch.randn(16, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x) + self.table)).mean(1)


class ChannelsFirst(nn.Module):
    """The same table added channels first, (channels, time), before a Conv1d: 16 channels, 16 steps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv1d(4, 16, 1), nn.Conv1d(16, 3, 1)
        self.table = nn.Parameter(torch.randn(16, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x) + self.table)).mean(2)


@pytest.mark.parametrize(
    ("net", "shape", "expanded"), [(TokensLast, (2, 16, 4), (16, 32)), (ChannelsFirst, (2, 4, 16), (32, 16))]
)
def test_a_container_tensor_of_coincident_sizes_takes_the_axis_that_verifies(net, shape, expanded) -> None:
    torch.manual_seed(0)
    model_s, x = net().double().eval(), torch.randn(*shape, dtype=torch.float64)
    model = gpd.expand(model_s, 2, example_input=x).eval()
    assert model.dynamic.table.shape == expanded
    assert rel_err(model.forward_dynamic(x), model_s(x)) <= 1e-12
    with pytest.raises(gpd.ExpansionError, match=r"'table' of shape \(16, 16\): several axes"):
        gpd.expand(model_s, 2, example_input=x, check=False)  # only verification can decide
