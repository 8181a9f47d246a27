"""Versions of ``cxr-ensemble`` registered before the package layout changed keep loading."""

from pathlib import Path

import cloudpickle

from multiloss.ensembles.serving import EnsemblePipeline

# Written by cloudpickle from the code as it was before the move: it names multiloss.serving.EnsemblePipeline.
OLD_PICKLE = Path(__file__).resolve().parents[1] / "fixtures" / "ensemble_pipeline_before_layout.pkl"


def test_a_pipeline_pickled_under_its_old_module_unpickles_as_todays_class():
    data = OLD_PICKLE.read_bytes()
    assert b"multiloss.serving" in data and b"multiloss.ensembles" not in data
    model = cloudpickle.loads(data)
    assert type(model) is EnsemblePipeline
