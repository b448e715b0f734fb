"""Mean pooling expressed as one more BERT layer, so a mean-pooled classifier stays a plain
`BertForSequenceClassification` that `transformers.pipeline()` (and torch.jit / Neuron tracing) load as is.

all-MiniLM-L6-v2 was trained by sentence-transformers for *mean* pooling; `BertForSequenceClassification`
reads the [CLS] token through a pooler that sentence-transformers never trained. Appending this layer makes
the [CLS] output of the encoder the LayerNorm of the mean of the last layer's token states over the
attention mask ([CLS] and [SEP] included, padding excluded: exactly sentence-transformers' mean pooling):

- query and key weights are zero, so every unmasked position gets the same attention score and the
  softmax averages the values over the sentence;
- values are the identity and the attention output dense is `SCALE * identity`, so the residual
  `LayerNorm(SCALE * mean + h)` equals `LayerNorm(mean)` up to a relative error of about 1/SCALE;
- the feed-forward output is zero, so the second LayerNorm (weight 1, bias 0) passes that through.

Every token position is computed (a BERT layer cannot run on [CLS] alone), so the layer costs what one
encoder layer costs: about 1/6 more forward time on the 6-layer MiniLM.
"""

from __future__ import annotations

import torch

#: Pooling choices for a classifier built on the base encoder.
POOLING_CHOICES = ("cls", "mean")
#: How much the pooled mean outweighs the [CLS] token's own residual inside the first LayerNorm.
SCALE = 10000.0


def _encoder_layers(model):
    """The encoder's ModuleList of a BERT-family model (or None)."""
    return getattr(getattr(getattr(model, "base_model", model), "encoder", None), "layer", None)


def add_mean_pooling_layer(model) -> None:
    """Append the mean-pooling layer to a BERT-family sequence classifier, in place."""
    import copy

    layers = _encoder_layers(model)
    if layers is None or len(layers) == 0:
        raise ValueError("mean pooling needs a BERT-style encoder (model.base_model.encoder.layer)")
    layer = copy.deepcopy(layers[-1])
    hidden = model.config.hidden_size
    eye = torch.eye(hidden)
    with torch.no_grad():
        attention = layer.attention
        for linear in (attention.self.query, attention.self.key):
            linear.weight.zero_()
            linear.bias.zero_()
        attention.self.value.weight.copy_(eye)
        attention.self.value.bias.zero_()
        attention.output.dense.weight.copy_(eye * SCALE)
        attention.output.dense.bias.zero_()
        for norm in (attention.output.LayerNorm, layer.output.LayerNorm):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        layer.intermediate.dense.weight.zero_()
        layer.intermediate.dense.bias.zero_()
        layer.output.dense.weight.zero_()
        layer.output.dense.bias.zero_()
    for param in layer.parameters():
        param.requires_grad_(False)
    if hasattr(attention.self, "layer_idx"):
        attention.self.layer_idx = len(layers)
    layers.append(layer)
    model.config.num_hidden_layers = len(layers)


def remove_mean_pooling_layer(model) -> bool:
    """Drop the mean-pooling layer from a classifier that has one, in place (the model then reads [CLS]
    through its pooler); return whether there was one."""
    if not has_mean_pooling(model):
        return False
    layers = _encoder_layers(model)
    del layers[-1]
    model.config.num_hidden_layers = len(layers)
    return True


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling (the reference the layer above is tested against)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def is_mean_pooling_layer(layer) -> bool:
    """True when `layer` attends uniformly (query weights and bias zero: every score is 0), which is
    what makes evaluating it at [CLS] alone exact."""
    query = getattr(getattr(getattr(layer, "attention", None), "self", None), "query", None)
    weight, bias = getattr(query, "weight", None), getattr(query, "bias", None)
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        return False
    return not bool(weight.any()) and not bool(bias.any())


def has_mean_pooling(model) -> bool:
    layers = _encoder_layers(model)
    return bool(layers) and len(layers) > 1 and is_mean_pooling_layer(layers[-1])


def _without_last_layer(bert: torch.nn.Module) -> torch.nn.Module:
    """A view of `bert` that runs every encoder layer but the last and no pooler (shares all weights)."""
    import copy

    trunk = copy.copy(bert)
    trunk._modules = dict(bert._modules)
    encoder = copy.copy(bert.encoder)
    encoder._modules = dict(bert.encoder._modules)
    encoder.layer = torch.nn.ModuleList(list(bert.encoder.layer)[:-1])
    trunk.encoder = encoder
    trunk.pooler = None
    return trunk


class MeanPooledLogits(torch.nn.Module):
    """The logits of a classifier whose last layer is the mean-pooling layer, with that layer evaluated
    at the [CLS] position only. Uniform attention makes every head's output the masked mean of the
    values, and `value(mean(h)) == mean(value(h))`, so this equals the full model's logits (up to float
    rounding) at about 6/7 of the cost on a 6-layer base. Positional tensors in, a tensor out (traceable).
    Check `has_mean_pooling(model)` first (on the float weights, before any quantization).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        bert = model.base_model
        self.trunk = _without_last_layer(bert)
        self.pool = bert.encoder.layer[-1]
        self.pooler = bert.pooler
        self.classifier = model.classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask)[0]
        mean = mean_pool(hidden, attention_mask)
        attention = self.pool.attention
        pooled = attention.output(attention.self.value(mean), hidden[:, 0])  # LayerNorm(dense(v) + h_cls)
        pooled = self.pool.output(self.pool.intermediate(pooled), pooled)  # the feed-forward block
        return self.classifier(self.pooler.activation(self.pooler.dense(pooled)))
