"""revsearch: memory-efficient differentiable architecture search for Transformers.

Layers, each importing only those below it: ``reversible`` (engine) <- ``ops`` <- ``search`` / ``models``
<- ``data`` / ``train`` <- ``orchestration`` (Ray Tune, Optuna, MLflow) <- ``cli``.
"""
__version__ = "0.1.0"
