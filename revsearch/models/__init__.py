"""Seq2seq models: the split encoder-decoder skeleton shared by supernet and derived models, and the standard Transformer baseline."""
