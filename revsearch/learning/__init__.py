"""What the supernet search and the retraining share: the label-smoothed loss and the learning-rate
schedule. It sits below ``search/`` and ``train/`` so that neither imports the other."""
from .loss import label_smoothed_nll, label_smoothed_sums, sequence_loss
from .schedule import InverseSqrtSchedule

__all__ = ["label_smoothed_nll", "label_smoothed_sums", "sequence_loss", "InverseSqrtSchedule"]
