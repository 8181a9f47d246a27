"""The old home of the served ensemble: ``cxr-ensemble`` versions registered before the package
layout changed pickled their model as ``multiloss.serving.EnsemblePipeline`` and load through here."""

from multiloss.ensembles.serving import EnsemblePipeline  # noqa: F401
