"""The vocabulary ids every part of revsearch agrees on. SentencePiece is trained with exactly these
(``data/tokenizer.py``), the models pad their embeddings with ``PAD_ID`` and the losses ignore it, so
they are defined once, below every other module."""

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_IDS = frozenset((PAD_ID, UNK_ID, BOS_ID, EOS_ID))
