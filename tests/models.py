"""Tiny, real transformers checkpoints built from configs (random weights) for the tests."""
from __future__ import annotations

from pathlib import Path

GENRES = ["blues", "jazz", "metal", "pop"]


def _labels(genres):
    return {i: g for i, g in enumerate(genres)}, {g: i for i, g in enumerate(genres)}


def make_tiny_wav2vec2(folder: Path, genres=GENRES, seed: int = 0) -> Path:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    torch.manual_seed(seed)
    id2label, label2id = _labels(genres)
    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        classifier_proj_size=16, num_labels=len(genres), id2label=id2label, label2id=label2id)
    Wav2Vec2ForSequenceClassification(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True,
                             return_attention_mask=False).save_pretrained(folder)
    return folder


def make_tiny_ast(folder: Path, genres=GENRES, seed: int = 0) -> Path:
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    torch.manual_seed(seed)
    id2label, label2id = _labels(genres)
    config = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       num_labels=len(genres), id2label=id2label, label2id=label2id)
    ASTForAudioClassification(config).save_pretrained(folder)
    ASTFeatureExtractor().save_pretrained(folder)
    return folder


def make_tiny_whisper(folder: Path, genres=GENRES, seed: int = 0) -> Path:
    """A 2-layer Whisper encoder with a classification head. Its extractor pads or cuts every input to
    ``chunk_length`` seconds (30 s, 3000 frames); the encoder's positions must cover half of those."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    torch.manual_seed(seed)
    id2label, label2id = _labels(genres)
    config = WhisperConfig(
        d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
        decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=1500,
        classifier_proj_size=16, num_labels=len(genres), id2label=id2label, label2id=label2id)
    WhisperForAudioClassification(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder
