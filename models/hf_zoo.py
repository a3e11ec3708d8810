"""A zoo of tiny Hugging Face model folders, one per task, for the optimum ONNX export path.

Each builder writes ``save_pretrained`` output with seeded random weights (no hub, no
download): config.json (with ``architectures``), model.safetensors, plus a tokenizer for
text models and a preprocessor_config.json for image and audio models, so a consumer can
read image size, mean/std or the sampling rate the same way it would from a real checkpoint.
Models are small (hidden 32, 2 layers): each builds and exports in well under a second on a CPU.

    BUILDERS["bert-text-classification"] == ("text-classification", build_bert_text_classification)
    build("vit-image-classification", folder) -> folder

Needs torch, transformers and tokenizers (``portable-ep[export]``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Tuple

HIDDEN = 32
LAYERS = 2
HEADS = 4
LABELS = 3
IMAGE_SIZE = 32
SAMPLING_RATE = 16000
# Weights ~N(0, 0.2) rather than transformers' 0.02: with 0.02 a tiny random model's logits are
# ~0.01 apart, so top-1 agreement flips under any quantization noise; 0.2 gives margins ~0.5.
INIT_RANGE = 0.2

# A fixed vocabulary: specials, then single characters and "##" continuations (so any ASCII
# word tokenizes without [UNK]), then a few whole words. Built in code so that no vocab file
# has to ship or be downloaded.
_WORDS = ("the", "is", "of", "and", "to", "in", "it", "model", "export", "onnx", "fast", "good", "bad")
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"


def _vocab(specials) -> list:
    return list(specials) + list(_CHARS) + ["##" + c for c in _CHARS] + list(_WORDS)


def _save_tokenizer(folder: Path, *, cls: str, sep: str, pad: str, unk: str, mask: str,
                    model_input_names=("input_ids", "token_type_ids", "attention_mask")) -> int:
    """A WordPiece tokenizer saved as tokenizer.json (PreTrainedTokenizerFast); returns its vocab size.

    BERT-style ``cls A sep`` template for every architecture: the models are random, the
    point is only that AutoTokenizer loads and produces ids inside the embedding table.
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    specials = [pad, unk, cls, sep, mask]
    vocab = {token: i for i, token in enumerate(_vocab(specials))}
    tok = Tokenizer(WordPiece(vocab, unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, cls_token=cls, sep_token=sep, pad_token=pad, unk_token=unk, mask_token=mask,
        model_max_length=128, model_input_names=list(model_input_names),
    )
    fast.save_pretrained(str(folder))
    return len(vocab)


def _bert_tokens(folder: Path) -> int:
    return _save_tokenizer(folder, cls="[CLS]", sep="[SEP]", pad="[PAD]", unk="[UNK]", mask="[MASK]")


def _roberta_tokens(folder: Path) -> int:
    # RoBERTa-style names; ids follow our order (<pad>=0, <unk>=1, <s>=2, </s>=3), which the config repeats.
    return _save_tokenizer(folder, cls="<s>", sep="</s>", pad="<pad>", unk="<unk>", mask="<mask>",
                           model_input_names=("input_ids", "attention_mask"))


def _save(model, folder, preprocessor=None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(str(folder))
    if preprocessor is not None:
        preprocessor.save_pretrained(str(folder))
    return folder


def _text_kwargs(vocab: int) -> dict:
    return dict(vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                intermediate_size=4 * HIDDEN, max_position_embeddings=128, initializer_range=INIT_RANGE)


def _labels(n: int = LABELS, prefix: str = "LABEL") -> dict:
    id2label = {i: f"{prefix}_{i}" for i in range(n)}
    return dict(id2label=id2label, label2id={v: k for k, v in id2label.items()})


def _image_processor(cls_name: str, size: int = IMAGE_SIZE, **kwargs):
    import transformers

    return getattr(transformers, cls_name)(
        size={"height": size, "width": size}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], **kwargs,
    )


def _randomize_norm_stats(model) -> None:
    """Fresh BatchNorm statistics are 0/1; plausible values keep the graph from being trivially linear."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)


def build_bert_text_classification(folder, *, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = Path(folder)
    vocab = _bert_tokens(folder)
    torch.manual_seed(seed)
    config = BertConfig(**_text_kwargs(vocab), pad_token_id=0, **_labels())
    return _save(BertForSequenceClassification(config), folder)


def build_distilbert_token_classification(folder, *, seed: int = 0) -> Path:
    import torch
    from transformers import DistilBertConfig, DistilBertForTokenClassification

    folder = Path(folder)
    vocab = _save_tokenizer(folder, cls="[CLS]", sep="[SEP]", pad="[PAD]", unk="[UNK]", mask="[MASK]",
                            model_input_names=("input_ids", "attention_mask"))  # DistilBERT has no token types
    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=vocab, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=4 * HIDDEN,
        max_position_embeddings=128, pad_token_id=0, initializer_range=INIT_RANGE, **_labels(5, "TAG"),
    )
    return _save(DistilBertForTokenClassification(config), folder)


def build_roberta_question_answering(folder, *, seed: int = 0) -> Path:
    import torch
    from transformers import RobertaConfig, RobertaForQuestionAnswering

    folder = Path(folder)
    vocab = _roberta_tokens(folder)
    torch.manual_seed(seed)
    # Our tokenizer puts <pad> at 0, <s> at 2, </s> at 3. RoBERTa numbers positions from
    # pad_token_id + 1, so max_position_embeddings leaves room for that offset.
    config = RobertaConfig(**{**_text_kwargs(vocab), "max_position_embeddings": 130},
                           pad_token_id=0, bos_token_id=2, eos_token_id=3, type_vocab_size=1)
    return _save(RobertaForQuestionAnswering(config), folder)


def build_albert_fill_mask(folder, *, seed: int = 0) -> Path:
    import torch
    from transformers import AlbertConfig, AlbertForMaskedLM

    folder = Path(folder)
    vocab = _bert_tokens(folder)
    torch.manual_seed(seed)
    config = AlbertConfig(**_text_kwargs(vocab), embedding_size=16, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return _save(AlbertForMaskedLM(config), folder)


def build_electra_feature_extraction(folder, *, seed: int = 0) -> Path:
    import torch
    from transformers import ElectraConfig, ElectraModel

    folder = Path(folder)
    vocab = _bert_tokens(folder)
    torch.manual_seed(seed)
    config = ElectraConfig(**_text_kwargs(vocab), embedding_size=16, pad_token_id=0)
    return _save(ElectraModel(config), folder)


def build_vit_image_classification(folder, *, seed: int = 0) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=4 * HIDDEN,
        image_size=IMAGE_SIZE, patch_size=8, num_channels=3, initializer_range=INIT_RANGE, **_labels(5, "CLASS"),
    )
    return _save(ViTForImageClassification(config), folder, _image_processor("ViTImageProcessor"))


def build_yolos_object_detection(folder, *, seed: int = 0) -> Path:
    """YOLOS: a plain ViT with detection tokens, so optimum exports it without timm (DETR needs timm or a ResNet backbone)."""
    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    torch.manual_seed(seed)
    size = 64
    config = YolosConfig(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=4 * HIDDEN,
        image_size=[size, size], patch_size=8, num_detection_tokens=10, initializer_range=INIT_RANGE,
        **_labels(4, "OBJECT"),
    )
    processor = YolosImageProcessor(size={"height": size, "width": size}, image_mean=[0.5, 0.5, 0.5],
                                    image_std=[0.5, 0.5, 0.5])
    return _save(YolosForObjectDetection(config), folder, processor)


def build_segformer_semantic_segmentation(folder, *, seed: int = 0) -> Path:
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    size = 64
    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, HIDDEN], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=HIDDEN,
        image_size=size, initializer_range=INIT_RANGE, **_labels(4, "SEGMENT"),
    )
    model = SegformerForSemanticSegmentation(config)
    _randomize_norm_stats(model)  # the decode head has a BatchNorm
    return _save(model, folder, _image_processor("SegformerImageProcessor", size, do_reduce_labels=False))


def build_wav2vec2_audio_classification(folder, *, seed: int = 0) -> Path:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    torch.manual_seed(seed)
    # Three convolutions (stride 5*2*2 = 20) instead of seven (320): 1 s at 16 kHz -> 800 frames.
    config = Wav2Vec2Config(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=4 * HIDDEN,
        conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, classifier_proj_size=HIDDEN, vocab_size=32, initializer_range=INIT_RANGE,
        **_labels(4, "SOUND"),
    )
    # feat_extract_norm="group" (the default): such checkpoints are run without an attention mask.
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLING_RATE, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=False)
    return _save(Wav2Vec2ForSequenceClassification(config), folder, extractor)


BUILDERS: Dict[str, Tuple[str, Callable[..., Path]]] = {
    "bert-text-classification": ("text-classification", build_bert_text_classification),
    "distilbert-token-classification": ("token-classification", build_distilbert_token_classification),
    "roberta-question-answering": ("question-answering", build_roberta_question_answering),
    "albert-fill-mask": ("fill-mask", build_albert_fill_mask),
    "electra-feature-extraction": ("feature-extraction", build_electra_feature_extraction),
    "vit-image-classification": ("image-classification", build_vit_image_classification),
    "yolos-object-detection": ("object-detection", build_yolos_object_detection),
    "segformer-semantic-segmentation": ("semantic-segmentation", build_segformer_semantic_segmentation),
    "wav2vec2-audio-classification": ("audio-classification", build_wav2vec2_audio_classification),
}


def build(name: str, folder, *, seed: int = 0) -> Path:
    """Build the zoo model ``name`` (a BUILDERS key) into ``folder``; returns the folder."""
    try:
        _, builder = BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown zoo model {name!r}; choose one of {', '.join(BUILDERS)}") from None
    return builder(folder, seed=seed)
