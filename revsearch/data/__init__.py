"""Data: parallel corpora on disk, the joint SentencePiece model, token-count batching, the weight /
architecture split for the search, WMT'14 preparation, importing aligned files, and the embedded
synthetic language pair (the default that needs no download)."""
from .batching import (Batch, BatchConfig, collate, encode_pairs, filter_long, make_batches,
                       split_for_search)
from .corpus import (SPLITS, Corpus, CorpusConfig, load_corpus, read_lines, read_parallel, write_corpus,
                     write_split)
from .synthetic import SyntheticConfig, generate_corpus, generate_pairs, write_synthetic
from .tokenizer import (BOS_ID, EOS_ID, PAD_ID, UNK_ID, SentencePieceConfig, Tokenizer,
                        train_tokenizer)

__all__ = ["Batch", "BatchConfig", "collate", "encode_pairs", "filter_long", "make_batches",
           "split_for_search", "SPLITS", "Corpus", "CorpusConfig", "load_corpus", "read_lines",
           "read_parallel", "write_corpus", "write_split", "SyntheticConfig", "generate_corpus",
           "generate_pairs", "write_synthetic", "BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID",
           "SentencePieceConfig", "Tokenizer", "train_tokenizer"]
