import pytest
import torch

from pharmafl.errors import ConfigError
from pharmafl.models.drug_encoders import DRUG_ENCODERS
from pharmafl.models.dti import DTIModel
from pharmafl.models.featurize import dense_batch, mol_graph, sparse_batch
from pharmafl.models.pairs import PairTensors

DRUGS = [("d0", "CC(=O)Oc1ccccc1C(=O)O"), ("d1", "CCO"), ("d2", "c1ccncc1")]
TARGETS = [("t0", "MKKFFDSRRE"), ("t1", "PFWKILNPLLERGTYX"), ("t2", "ACDEFGHIKLMNPQRSTVWY")]
PAIRS = [(d, t, 5.0 + i * 0.1) for i, (d, t) in enumerate((d, t) for d, _ in DRUGS for t, _ in TARGETS)]


@pytest.fixture
def pairs():
    return PairTensors.build(DRUGS, TARGETS, PAIRS, max_len=24)


@pytest.mark.parametrize("name", sorted(DRUG_ENCODERS))
def test_dense_encoder_equals_sparse(name):
    model = DTIModel(drug_encoder=name, max_len=24, seed=3).eval()
    graphs = [mol_graph(s) for _, s in DRUGS]
    out_sparse = model.drug(sparse_batch(graphs))
    out_dense = model.drug(dense_batch(graphs))
    assert out_sparse.shape == (3, 128)
    torch.testing.assert_close(out_dense, out_sparse, atol=1e-5, rtol=1e-5)


def test_unique_encoding_equals_per_pair_outputs_and_gradients(pairs):
    index = torch.tensor([0, 4, 4, 8, 1, 6, 2])
    grads = {}
    outs = {}
    for unique in (True, False):
        model = DTIModel(max_len=24, seed=1).eval()  # eval: dropout off, same function
        batch = pairs.collate(index, unique=unique)
        out = model(*batch.args())
        torch.nn.functional.mse_loss(out, batch.labels).backward()
        outs[unique] = out.detach()
        grads[unique] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(outs[True], outs[False], atol=1e-5, rtol=1e-5)
    assert grads[True].keys() == grads[False].keys()
    for name in grads[True]:
        torch.testing.assert_close(grads[True][name], grads[False][name], atol=1e-5, rtol=1e-4)


def test_unique_encoding_encodes_each_entity_once(pairs):
    batch = pairs.collate([0, 1, 2, 3], unique=True)  # d0 with t0,t1,t2 ; d1 with t0
    assert batch.drugs.num_graphs == 2 and batch.targets.shape[0] == 3
    assert batch.drug_index.tolist() == [0, 0, 0, 1]
    per_pair = pairs.collate([0, 1, 2, 3], unique=False)
    assert per_pair.drugs.num_graphs == 4 and per_pair.drug_index is None


def test_constructor_seeds_itself_without_touching_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = DTIModel(max_len=24, seed=5)
    after = torch.rand(1)
    b = DTIModel(max_len=24, seed=5)
    c = DTIModel(max_len=24, seed=6)
    assert torch.equal(before, after)
    for (n, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), n
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_no_batchnorm_anywhere():
    for name in DRUG_ENCODERS:
        model = DTIModel(drug_encoder=name, max_len=24)
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"drug_encoder": "gine"},
            r"model.drug_encoder: Could not resolve 'gine' among choices \['gin', 'gcn', 'gat'\]",
        ),
        ({"max_len": 0}, "max_len must be a positive integer"),
        ({"kernel_size": 200}, "kernel_size"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_model_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DTIModel(**kwargs)


def test_from_config_is_the_keyword_construction():
    from dataclasses import asdict

    from pharmafl.models.config import ModelConfig

    cfg = ModelConfig(drug_encoder="gcn", max_len=24, latent_dim=16, seed=3, label_offset=5.0)
    a, b = DTIModel.from_config(cfg), DTIModel(**asdict(cfg))
    assert a.config == cfg and a.config_dict() == asdict(cfg)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    other = DTIModel.from_config(ModelConfig(drug_encoder="gcn", max_len=24, latent_dim=16, seed=4))
    assert not torch.equal(a.head[0].weight, other.head[0].weight)
    with pytest.raises(TypeError, match="takes a ModelConfig"):
        DTIModel.from_config(asdict(cfg))


def test_unknown_entity_in_pairs_is_named():
    from pharmafl.errors import FeaturizationError

    with pytest.raises(FeaturizationError, match="'t9'"):
        PairTensors.build(DRUGS, TARGETS, [("d0", "t9", 5.0)], max_len=24)


def test_bad_smiles_error_names_the_drug():
    from pharmafl.errors import FeaturizationError

    with pytest.raises(FeaturizationError, match="drug 'bad'.*unclosed ring"):
        PairTensors.build([("bad", "C1CC")], TARGETS, [], max_len=24)
