"""DARTS on top of the reversible engine: mixed nodes, the supernet, the bilevel step, genotypes."""
from ..learning import sequence_loss
from .bilevel import BilevelSearch, SearchConfig
from .derive import build_derived_model
from .genotype import Genotype, derive_genotype, uniform_genotype
from .node import MixedNode
from .supernet import Supernet, SupernetConfig

__all__ = ["BilevelSearch", "SearchConfig", "sequence_loss", "build_derived_model", "Genotype",
           "derive_genotype", "uniform_genotype", "MixedNode", "Supernet", "SupernetConfig"]
