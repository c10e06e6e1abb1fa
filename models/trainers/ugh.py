"""The name :class:`models.trainers.paired_codes.PairedCodesTrainer` had before it was renamed:
run directories saved earlier name ``models.trainers.ugh.UGHTrainer`` in their config.yaml, and
this keeps them loadable by val.py and resume=."""

from models.trainers.paired_codes import PairedCodesTrainer as UGHTrainer

__all__ = ["UGHTrainer"]
