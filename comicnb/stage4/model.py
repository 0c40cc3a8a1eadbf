"""Stage 4 sequence model: a transformer over a page's Stage 3 panel vectors, a pooled strip embedding, seven heads.

The seed's names are kept: ``Stage4SequenceModel(d_model=512, nhead=8, num_layers=6)``, ``forward(panel_embeddings,
panel_mask)`` returning ``contextualized_panels`` (B, N, d_model) and ``strip_embedding`` (B, d_model),
``encode_strip``, and one head per task (``panel_picking_head`` ... ``reading_order_head``).

Every head scores from the transformer's output (architecture, "Stage 4 task protocols"), never from the raw inputs:

- a candidate task builds one sequence per sample, ``[context panels, caption, query slot]``, and scores the
  candidates (projected like panels) against the state of one slot: the masked place of panel picking holds a learned
  mask token (the sample's ``slot``); the other tasks append a query slot after the context at the next reading
  position, which for the text tasks also carries the answer panel's text-free parts (``answer_panel``, no text);
  caption relevance enters its caption (a Stage 3 text-only vector) as a token before the query slot;
- every candidate logit also adds a learned multiple of the no-learning score, the cosine of the raw candidate to the
  raw context's mean (or to the caption): a skip around the model (``input_prior``). The trainer starts each task's
  multiple at the weight that fits that task's training samples best (``fit_prior_weight``: large where the Stage 3
  cosine finds the answer, near zero where it does not, as on the text tasks), so training starts from the Stage 3
  cosine baseline where it helps and the transformer's term is what it adds;
- where the batch gives ``boxes`` (each context panel's page-fraction box), they enter every panel's token (its place
  on the page, beside its reading position);
- with ``balloon_tokens``, each context panel's text boxes (``balloons``, ``balloon_boxes``, ``balloon_mask``;
  ``comicnb.stage4.balloons``) follow the sequence as tokens of their own: the box's text vector projected like a
  panel, a learned balloon type, its place inside the panel, and its panel's reading position and page box, so
  attention can relate a line to where it is said and to the other panels' lines; the scored slot is unchanged;
  where candidates give their text per box (``candidate_balloons``: character coherence), each candidate is read in
  a sequence of its own, its balloons at the query slot, and scored from that sequence's slot;
- reading order enters the shuffled panels with no positional encoding (their boxes are the input) and scores every
  ordered pair from the two panels' states and the pair's box geometry (``comicnb.stage4.geometry``); ``decode_order``
  turns the pair logits into a permutation;
- the strip embedding pools the contextual states with a learned query; every head reads it beside its slot state,
  so the multitask objective trains the pool, and ``strip_loss`` trains it as a page descriptor (two views of a
  page, random panels dropped, against the other pages' strips).

``use_transformer=False`` is the ablation: the same embedding, pool, heads and skip on the projected Stage 3 vectors
with no encoder layer in between, so evaluation shows what the transformer's context buys.

Batches are dicts of tensors (``comicnb.stage4.batches.BatchBuilder.collate`` makes them): ``context`` (B, L, D),
``context_mask`` (B, L), ``slot`` (B,), ``candidates`` (B, C, D), ``candidate_mask`` (B, C), ``answer`` (B,),
``query`` (B, D), ``order`` (B, L), ``direction`` (B,) (0 unlabelled, 1 rtl, 2 ltr), and optionally ``answer_panel``
(B, D) and ``boxes`` (B, L, 4).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comicnb.stage4.config import WRITTEN_BEFORE, Stage4ModelConfig
from comicnb.stage4.geometry import PAIR_FEATURES, direction_sign, pair_features, small_mlp
from comicnb.stage4.tasks import TASKS

READING_ORDER = "reading_order"
CANDIDATE_TASKS = tuple(t for t in TASKS if t != READING_ORDER)
POSITION_BASE = 10000.0  # the sinusoid's longest wavelength, as in "Attention is all you need"
INITIAL_SCALE = 10.0  # candidate logits are cosines times a learned scale, starting where a softmax is not flat
# With the input prior, the learned term starts small, so the model starts where the prior is. The prior's weight
# is set by the trainer from the training samples (``fit_prior_weight``); built without them it starts where the
# Stage 3 cosines' spread over a sample's candidates (about 0.02 to 0.08 on the embedded corpus) gives logits of
# about one. Both are scalars that Adam moves by about the learning rate a step, so the trainer gives them their own,
# larger rate (``GAIN_LR``): at the shared rate a weight of 20 barely moved in a study's 250 steps.
PRIOR_LEARNED_SCALE = 1.0
PRIOR_WEIGHT = 20.0
GAINS = ("log_scale", "prior_weight")  # the heads' scalar gains (parameter names)
GAIN_LR = 30.0  # their learning rate, as a multiple of the model's
MAX_SCALE = 100.0
BOX_FEATURES = 4  # a panel's box as [x1, y1, x2, y2] fractions of its page
BALLOON_KEYS = ("balloons", "balloon_boxes", "balloon_mask")  # a batch's balloon tokens (BatchBuilder(balloons=True))
CANDIDATE_BALLOON_KEYS = ("candidate_balloons", "candidate_balloon_boxes", "candidate_balloon_mask")


def sinusoidal_positions(positions: Tensor, dim: int) -> Tensor:
    """(..., dim) sinusoidal encodings of (...) positions; computed on the fly, so any length works."""
    half = (dim + 1) // 2
    frequencies = torch.exp(
        -math.log(POSITION_BASE) * torch.arange(half, device=positions.device, dtype=torch.float32) / half
    )
    angles = positions.float()[..., None] * frequencies  # (..., half)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)[..., :dim]


def as_mask(panel_mask: Tensor | None, like: Tensor) -> Tensor:
    """(B, N) bool mask from a float or bool mask; all panels when None."""
    if panel_mask is None:
        return torch.ones(like.shape[:2], dtype=torch.bool, device=like.device)
    return panel_mask.to(like.device) > 0 if panel_mask.dtype != torch.bool else panel_mask.to(like.device)


def attendable(mask: Tensor) -> Tensor:
    """The mask with empty rows opened up: attention over no key is NaN, and NaN would reach the gradients of the
    whole batch even when the row's output is zeroed afterwards."""
    return mask | ~mask.any(dim=1, keepdim=True)


class AttentionPool(nn.Module):
    """A learned query attending over the valid states: (B, T, d), (B, T) -> (B, d); zero for a row with none."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, d_model) * d_model**-0.5)
        self.attention = nn.MultiheadAttention(d_model, nhead, batch_first=True)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, states: Tensor, mask: Tensor) -> Tensor:
        """Pool the states a mask keeps."""
        query = self.query.expand(states.shape[0], -1, -1)  # (B, 1, d)
        pooled, _ = self.attention(query, states, states, key_padding_mask=~attendable(mask), need_weights=False)
        return self.norm(pooled[:, 0]) * mask.any(dim=1, keepdim=True)  # (B, d)


class CandidateHead(nn.Module):
    """Scores candidates against one slot's contextual state and the strip: cosine times a learned scale, plus,
    where a ``prior`` is given, that no-learning score times a second learned weight.

    ``forward(query, candidates, strip=None, candidate_mask=None, prior=None)``: query (B, d) slot states,
    candidates (B, C, d) (or (B, d): one each, giving (B,)) projected candidates, strip (B, d), prior (B, C) the
    cosine of each raw candidate to the raw context (``input_prior``); masked candidates get -inf.

    The prior is a skip connection around the whole model: the model starts where the Stage 3 cosine baseline is,
    and the transformer's term is what training adds to it (the ablations keep the same skip, so they measure the
    transformer, not the skip).
    """

    def __init__(self, d_model: int, prior: bool = False) -> None:
        super().__init__()
        # The strip sits beside the slot state: the page as a whole says what kind of panel or text fits.
        self.query = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.key = nn.Linear(d_model, d_model)
        self.log_scale = nn.Parameter(torch.tensor(math.log(PRIOR_LEARNED_SCALE if prior else INITIAL_SCALE)))
        self.prior_weight = nn.Parameter(torch.tensor(PRIOR_WEIGHT if prior else 0.0))

    @torch.no_grad()
    def set_prior_weight(self, weight: float) -> None:
        """Start the prior's multiple at ``weight`` (``fit_prior_weight`` on training samples), within the bound."""
        self.prior_weight.fill_(float(np.clip(weight, -MAX_SCALE, MAX_SCALE)))

    def forward(
        self,
        query: Tensor,
        candidates: Tensor,
        strip: Tensor | None = None,
        candidate_mask: Tensor | None = None,
        prior: Tensor | None = None,
    ) -> Tensor:
        """(B, C) candidate logits."""
        single = candidates.dim() == 2
        candidates = candidates[:, None] if single else candidates  # (B, C, d)
        strip = torch.zeros_like(query) if strip is None else strip
        q = F.normalize(self.query(torch.cat([query, strip], dim=-1)), dim=-1)  # (B, d)
        k = F.normalize(self.key(candidates), dim=-1)  # (B, C, d)
        # Bounded like CLIP's logit scale: an unbounded scale lets a few easy samples blow the logits up.
        logits = torch.einsum("bd,bcd->bc", q, k) * self.log_scale.clamp(max=math.log(MAX_SCALE)).exp()
        if prior is not None:
            prior = prior[:, None] if single else prior
            logits = logits + prior.to(logits.dtype) * self.prior_weight.clamp(-MAX_SCALE, MAX_SCALE)
        if candidate_mask is not None:
            logits = logits.masked_fill(~candidate_mask.bool(), -torch.inf)
        return logits[:, 0] if single else logits


class ReadingOrderHead(nn.Module):
    """Pairwise "i is read before j" logits from contextual states: (B, N, d) -> (B, N, N), antisymmetric.

    ``forward(states, mask=None, strip=None, pairs=None)``: ``pairs`` (B, N, N, len(PAIR_FEATURES)) the geometry
    of each ordered pair of boxes (``comicnb.stage4.geometry.pair_features``), read beside the two states; pairs with
    a padding panel, and the diagonal, are 0.
    """

    def __init__(self, d_model: int, layout: bool = False) -> None:
        super().__init__()
        # The first layer of an MLP on [h_i, h_j, strip, geometry_ij] split in four, so pairs cost O(N^2 d), not
        # O(N^2 d^2).
        self.first = nn.Linear(d_model, d_model)
        self.second = nn.Linear(d_model, d_model, bias=False)
        self.context = nn.Linear(d_model, d_model, bias=False)
        self.geometry = nn.Linear(len(PAIR_FEATURES), d_model, bias=False)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(d_model, 1))
        # The layout branch (``layout_prior``): the geometry baseline's own network on the standardised pair features,
        # its score added to the content's. ``set_layout`` copies a fitted baseline into it, holds it, and zeroes the
        # content's last layer, so training starts where the geometry model reads and learns only what the panels'
        # content adds (pages whose boxes admit two orders); the model cannot start below what it is given.
        self.layout = small_mlp(len(PAIR_FEATURES)) if layout else None
        if layout:
            self.register_buffer("pair_mean", torch.zeros(len(PAIR_FEATURES)))
            self.register_buffer("pair_std", torch.ones(len(PAIR_FEATURES)))

    @torch.no_grad()
    def set_layout(self, net: nn.Module, mean: np.ndarray, std: np.ndarray) -> None:
        """Take a fitted geometry baseline's network and feature scaling as the layout branch, held from here on,
        and zero the content's last layer (see ``__init__``)."""
        if self.layout is None:
            raise ValueError("this reading-order head has no layout branch (layout_prior=False)")
        self.layout.load_state_dict(net.state_dict())
        self.layout.requires_grad_(False)
        self.pair_mean.copy_(torch.as_tensor(mean, dtype=self.pair_mean.dtype))
        self.pair_std.copy_(torch.as_tensor(std, dtype=self.pair_std.dtype))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(
        self, states: Tensor, mask: Tensor | None = None, strip: Tensor | None = None, pairs: Tensor | None = None
    ) -> Tensor:
        """(B, N, N) pair logits; [b, i, j] > 0 says panel i comes before panel j."""
        mask = as_mask(mask, states)
        strip = states.new_zeros(states.shape[0], states.shape[-1]) if strip is None else strip
        hidden = self.first(states)[:, :, None] + self.second(states)[:, None] + self.context(strip)[:, None, None]
        if pairs is not None:
            hidden = hidden + self.geometry(pairs.to(hidden.dtype))
        scores = self.out(hidden).squeeze(-1)  # (B, N, N)
        if pairs is not None and self.layout is not None:
            scaled = (pairs.to(scores.dtype) - self.pair_mean.to(scores.dtype)) / self.pair_std.to(scores.dtype)
            scores = scores + self.layout(scaled).squeeze(-1)
        # Antisymmetric by construction: (i, j) and (j, i) can never both claim to come first.
        logits = scores - scores.transpose(1, 2)
        pairs = mask[:, :, None] & mask[:, None, :]
        return logits.masked_fill(~pairs, 0.0)


class Stage4SequenceModel(nn.Module):
    """Transformer over a page's panel vectors with a strip pool and the seven task heads (see the module)."""

    def __init__(self, config: Stage4ModelConfig | None = None, **settings: Any) -> None:
        """Build from a config, or from its fields as keywords, as the seed does:
        ``Stage4SequenceModel(d_model=512, nhead=8, num_layers=6)``."""
        super().__init__()
        if config is not None and not isinstance(config, Stage4ModelConfig):
            raise TypeError("the first argument is a Stage4ModelConfig; give sizes as keywords (d_model=512, ...)")
        cfg = config if config is not None else Stage4ModelConfig(**settings)
        if config is not None and settings:
            cfg = Stage4ModelConfig(**{**asdict(config), **settings})
        self.cfg = cfg
        d = cfg.d_model
        # Panels and candidates share one projection, so a slot's state is compared with candidates in the space
        # its own panel would have entered in.
        self.embed = nn.Sequential(nn.Linear(cfg.input_dim, d), nn.LayerNorm(d))
        self.slot_tokens = nn.Embedding(len(TASKS), d)  # the mask token of panel picking, a query slot per task
        self.caption_type = nn.Parameter(torch.zeros(d))  # tells a caption token from a panel
        self.direction = nn.Embedding(2, d, padding_idx=0)  # index 1 for rtl; 0 (ltr, unlabelled) adds nothing
        # A panel's place on the page, where the batch gives boxes; no bias, so a place with no box adds nothing.
        self.box_embed = nn.Linear(BOX_FEATURES, d, bias=False)
        if cfg.balloon_tokens:  # only then, so checkpoints of models without them load as they were saved
            self.balloon_type = nn.Parameter(torch.zeros(d))  # tells a balloon token from a panel
            self.balloon_box_embed = nn.Linear(BOX_FEATURES, d, bias=False)  # its place inside the panel
        self.encoder = self._encoder(cfg) if cfg.use_transformer else None
        self.norm = nn.LayerNorm(d)  # the pre-norm encoder's outputs are not normalised
        self.strip_pool = AttentionPool(d, cfg.nhead)
        for task in CANDIDATE_TASKS:
            setattr(self, f"{task}_head", CandidateHead(d, prior=cfg.input_prior))
        self.reading_order_head = ReadingOrderHead(d, layout=cfg.layout_prior)

    @staticmethod
    def _encoder(cfg: Stage4ModelConfig) -> nn.TransformerEncoder:
        """The encoder stack; pre-norm, which trains without warm-up at these depths."""
        layer = nn.TransformerEncoderLayer(
            cfg.d_model,
            cfg.nhead,
            cfg.dim_feedforward,
            cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        return nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Stage4ModelConfig) -> Stage4SequenceModel:
        """Rebuild a model from its config (a checkpoint's plain dict), then load its state dict into it."""
        if isinstance(config, Stage4ModelConfig):
            return cls(config)
        known = {f.name for f in fields(Stage4ModelConfig)}
        given = {**WRITTEN_BEFORE, **config}  # a checkpoint older than a setting was trained without it
        return cls(Stage4ModelConfig(**{k: v for k, v in given.items() if k in known}))

    @property
    def config(self) -> dict[str, Any]:
        """The config as the plain dict a checkpoint stores."""
        return asdict(self.cfg)

    # ------------------------------------------------------------------------------------------------ encoding

    def encode(
        self,
        tokens: Tensor,
        mask: Tensor,
        positions: Tensor | None = None,
        direction: Tensor | None = None,
        boxes: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(states (B, T, d), strip (B, d)) of embedded tokens (B, T, d); padding states are zero.

        ``positions`` (B, T) reading positions (None: no positional encoding), ``direction`` (B,) 0 unlabelled,
        1 rtl, 2 ltr, ``boxes`` (B, T, 4) page-fraction boxes (zero where a token has none)."""
        x = self._with_places(tokens, positions, direction, boxes)
        if self.encoder is not None:
            x = self.encoder(x, src_key_padding_mask=~attendable(mask))
        states = self.norm(x) * mask[..., None]  # (B, T, d)
        return states, self.strip_pool(states, mask)

    def _with_places(
        self, tokens: Tensor, positions: Tensor | None, direction: Tensor | None, boxes: Tensor | None
    ) -> Tensor:
        """Tokens with their box, reading position and the book's direction added: the encoder's input."""
        x = tokens
        if boxes is not None:
            x = x + self.box_embed(boxes.to(x.device, x.dtype))
        if positions is not None:
            x = x + sinusoidal_positions(positions, x.shape[-1]).to(x.dtype)
        if direction is not None:  # codes: 0 unlabelled, 1 rtl, 2 ltr (geometry.DIRECTIONS); only rtl adds a vector
            x = x + self.direction((direction.to(x.device) == 1).long())[:, None]
        return x

    @torch.no_grad()
    def attention_maps(self, task: str, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Where a candidate task's sequence attends: ((B, layers, T, T) attention averaged over heads, (B,) the scored
        slot's index, (B, T) valid tokens); the same sequence ``task_logits`` encodes. Needs the transformer."""
        if self.encoder is None:
            raise ValueError("a model without a transformer (use_transformer=False) has no attention to show")
        if task not in CANDIDATE_TASKS:
            raise ValueError(f"attention maps are for the candidate tasks: one of {', '.join(CANDIDATE_TASKS)}")
        sequence, valid, positions, direction, boxes, index = self._candidate_sequence(task, batch)
        x = self._with_places(sequence, positions, direction, boxes)
        padding = ~attendable(valid)
        maps = []
        for layer in self.encoder.layers:  # pre-norm layers: attention reads norm1 of the layer's input
            h = layer.norm1(x)
            _, weights = layer.self_attn(h, h, h, key_padding_mask=padding, need_weights=True)
            maps.append(weights)
            x = layer(x, src_key_padding_mask=padding)
        return torch.stack(maps, dim=1), index, valid

    def forward(
        self, panel_embeddings: Tensor, panel_mask: Tensor | None = None, panel_boxes: Tensor | None = None
    ) -> dict[str, Tensor]:
        """A page's panels (B, N, input_dim) in reading order -> ``contextualized_panels`` (B, N, d_model),
        ``strip_embedding`` (B, d_model) and the bool ``panel_mask`` (B, N); ``panel_boxes`` (B, N, 4) optional."""
        mask = as_mask(panel_mask, panel_embeddings)
        positions = torch.arange(panel_embeddings.shape[1], device=panel_embeddings.device).expand(mask.shape)
        states, strip = self.encode(self.embed(panel_embeddings), mask, positions, boxes=panel_boxes)
        return {"contextualized_panels": states, "strip_embedding": strip, "panel_mask": mask}

    def encode_strip(self, panel_embeddings: Tensor, panel_mask: Tensor | None = None) -> Tensor:
        """(B, d_model) strip embedding of pages of panels (all panels valid when no mask is given)."""
        return self(panel_embeddings, panel_mask)["strip_embedding"]

    # --------------------------------------------------------------------------------------------------- tasks

    def task_logits(self, task: str, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, C) candidate logits, masked candidates -inf; reading order: (B, L, L) pair logits, [b, i, j] the
        logit that context panel i is read before panel j."""
        if task == READING_ORDER:
            return self._reading_order(batch)
        if task not in CANDIDATE_TASKS:
            raise ValueError(f"unknown task {task!r}: one of {', '.join(TASKS)}")
        if self._reads_candidate_balloons(batch):
            return self._per_candidate_logits(task, batch)
        states, strip, index = self._candidate_states(task, batch)
        query = states[torch.arange(len(index), device=index.device), index]  # (B, d)
        raw = batch["candidates"].to(query.device)
        candidates = self.embed(raw)  # (B, C, d)
        head: CandidateHead = getattr(self, f"{task}_head")
        prior = input_prior(batch, raw) if self.cfg.input_prior else None
        return head(query, candidates, strip, batch["candidate_mask"].to(query.device), prior)

    def _reads_candidate_balloons(self, batch: Mapping[str, Tensor]) -> bool:
        """Whether this batch's candidates bring balloon tokens this model reads."""
        return self.cfg.balloon_tokens and all(k in batch for k in CANDIDATE_BALLOON_KEYS)

    def _per_candidate_logits(self, task: str, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, C) logits where candidates bring their own balloon tokens: one sequence per candidate, the shared
        ``[context, caption, query slot, context balloons]`` followed by the candidate's balloons at the query slot's
        reading position, each candidate scored from its own sequence's slot state (and strip)."""
        sequence, valid, positions, direction, boxes, index = self._candidate_sequence(task, batch)
        device = sequence.device
        vectors = batch["candidate_balloons"].to(device)  # (B, C, K, D)
        batch_size, count, width, _ = vectors.shape
        flat = batch_size * count
        tokens = self._balloon_tokens(vectors, batch["candidate_balloon_boxes"]).reshape(flat, width, -1)
        kept = batch["candidate_balloon_mask"].to(device).bool().reshape(flat, width)

        def each(t: Tensor) -> Tensor:  # (B, ...) -> (B * C, ...), candidate after candidate
            return t.repeat_interleave(count, dim=0)

        rows = torch.arange(batch_size, device=device)
        at_query = positions[rows, index]  # (B,) the scored slot's reading position
        sequence = torch.cat([each(sequence), tokens], dim=1)
        valid = torch.cat([each(valid), kept], dim=1)
        positions = torch.cat([each(positions), each(at_query)[:, None].expand(-1, width)], dim=1)
        if boxes is not None:  # the query slot has no page box of its own: neither have its balloons
            boxes = torch.cat([each(boxes), boxes.new_zeros(flat, width, BOX_FEATURES)], dim=1)
        direction = None if direction is None else each(direction.to(device))
        states, strip = self.encode(sequence, valid, positions, direction, boxes)
        query = states[torch.arange(flat, device=device), each(index)]  # (B * C, d)
        raw = batch["candidates"].to(device)
        candidates = self.embed(raw).reshape(flat, -1)
        prior = input_prior(batch, raw).reshape(flat) if self.cfg.input_prior else None
        head: CandidateHead = getattr(self, f"{task}_head")
        logits = head(query, candidates, strip, None, prior).reshape(batch_size, count)
        return logits.masked_fill(~batch["candidate_mask"].to(device).bool(), -torch.inf)

    def _candidate_states(self, task: str, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """States of ``[context, caption, query slot]``, the strip, and (B,) the index of the scored slot: the
        masked place where ``slot`` >= 0, else the appended query slot."""
        sequence, valid, positions, direction, boxes, index = self._candidate_sequence(task, batch)
        states, strip = self.encode(sequence, valid, positions, direction, boxes)
        return states, strip, index

    def _candidate_sequence(self, task: str, batch: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
        """The embedded ``[context, caption, query slot]`` tokens (B, L + 2, d), which are valid, their reading
        positions, the books' directions, their boxes and (B,) the index of the scored slot."""
        context = batch["context"]
        device = self.slot_tokens.weight.device
        context, mask = context.to(device), batch["context_mask"].to(device).bool()
        batch_size, length = mask.shape
        slot = batch["slot"].to(device).long() if "slot" in batch else torch.full((batch_size,), -1, device=device)
        in_place = slot >= 0
        token = self.slot_tokens(torch.tensor(TASKS.index(task), device=device))  # (d,)
        tokens = self.embed(context)  # (B, L, d)
        at_slot = torch.zeros_like(mask)
        at_slot[in_place, slot[in_place]] = True
        tokens = torch.where(at_slot[..., None], token, tokens)
        mask = mask | at_slot

        query = batch.get("query")
        query = torch.zeros(batch_size, self.cfg.input_dim, device=device) if query is None else query.to(device)
        has_caption = query.abs().sum(dim=-1) > 0  # (B,)
        caption = self.embed(query) + self.caption_type  # (B, d)
        appended = token.expand(batch_size, -1)
        panel = batch.get("answer_panel")
        if panel is not None:  # the answer panel as shown (text-free), where the task shows it
            panel = panel.to(device)
            appended = appended + self.embed(panel) * (panel.abs().sum(dim=-1, keepdim=True) > 0)

        count = mask.sum(dim=1)  # (B,) context panels, the masked place included
        sequence = torch.cat([tokens, caption[:, None], appended[:, None]], dim=1)  # (B, L + 2, d)
        boxes = batch.get("boxes")
        if boxes is not None:  # the caption and the query slot have no box of their own
            boxes = torch.cat([boxes.to(device), boxes.new_zeros(batch_size, 2, BOX_FEATURES).to(device)], dim=1)
        valid = torch.cat([mask, has_caption[:, None], ~in_place[:, None]], dim=1)
        positions = torch.cat(
            [
                torch.arange(length, device=device).expand(batch_size, -1),
                count[:, None],
                (count + has_caption.long())[:, None],
            ],
            dim=1,
        )
        index = torch.where(in_place, slot, torch.full_like(slot, length + 1))
        sequence, valid, positions, boxes = self._with_balloons(batch, sequence, valid, positions, boxes, length)
        return sequence, valid, positions, batch.get("direction"), boxes, index

    def _balloon_tokens(self, vectors: Tensor, places: Tensor) -> Tensor:
        """Embedded balloon tokens of (..., D) text vectors and (..., 4) places inside their panels."""
        return self.embed(vectors) + self.balloon_type + self.balloon_box_embed(places.to(vectors.device))

    def _with_balloons(
        self,
        batch: Mapping[str, Tensor],
        sequence: Tensor,
        valid: Tensor,
        positions: Tensor | None,
        boxes: Tensor | None,
        length: int,
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """The sequence with the first ``length`` tokens' (the context panels') balloon tokens appended, each with its
        panel's reading position and page box; unchanged for a model without balloon tokens or a batch without
        them."""
        if not self.cfg.balloon_tokens or any(key not in batch for key in BALLOON_KEYS):
            return sequence, valid, positions, boxes
        device = sequence.device
        vectors = batch["balloons"].to(device)  # (B, L, K, D)
        batch_size, _, width, _ = vectors.shape
        tokens = self._balloon_tokens(vectors, batch["balloon_boxes"])
        kept = batch["balloon_mask"].to(device).bool() & valid[:, :length, None]  # (B, L, K)
        sequence = torch.cat([sequence, tokens.reshape(batch_size, length * width, -1)], dim=1)
        valid = torch.cat([valid, kept.reshape(batch_size, -1)], dim=1)
        if positions is not None:
            repeated = positions[:, :length, None].expand(-1, -1, width).reshape(batch_size, -1)
            positions = torch.cat([positions, repeated], dim=1)
        if boxes is not None:
            panel_boxes = boxes[:, :length, None].expand(-1, -1, width, -1).reshape(batch_size, -1, BOX_FEATURES)
            boxes = torch.cat([boxes, panel_boxes], dim=1)
        return sequence, valid, positions, boxes

    def _reading_order(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, L, L) pair logits of the shuffled panels, entered without positions (their list place is noise)."""
        device = self.slot_tokens.weight.device
        mask = batch["context_mask"].to(device).bool()
        direction, boxes = batch.get("direction"), batch.get("boxes")
        length = mask.shape[1]
        boxes = None if boxes is None else boxes.to(device)
        tokens, valid, _, places = self._with_balloons(
            batch, self.embed(batch["context"].to(device)), mask, None, boxes, length
        )
        states, strip = self.encode(tokens, valid, None, direction, places)
        states = states[:, :length]  # the panels' states; their balloons informed them through attention
        if boxes is None:
            pairs = None
        else:
            codes = direction if direction is not None else torch.zeros(len(mask), dtype=torch.long)
            pairs = pair_features(boxes.to(device), direction_sign(codes.to(device)))
        return self.reading_order_head(states, mask, strip, pairs)

    def task_loss(self, task: str, batch: Mapping[str, Tensor]) -> Tensor:
        """Scalar loss of one task's batch: cross-entropy over the candidates (samples with answer -1 left out);
        reading order: binary cross-entropy over every ordered pair of valid panels."""
        logits = self.task_logits(task, batch)
        if task == READING_ORDER:
            return self._order_loss(logits, batch)
        answer = batch["answer"].to(logits.device).long()
        if not (answer >= 0).any():
            return logits.masked_fill(~torch.isfinite(logits), 0.0).sum() * 0.0  # keeps the graph for backward
        return F.cross_entropy(logits, answer, ignore_index=-1)

    @staticmethod
    def _order_loss(logits: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        """BCE of the pair logits against "i before j" over pairs of distinct panels with known positions."""
        order = batch["order"].to(logits.device).long()
        known = batch["context_mask"].to(logits.device).bool() & (order >= 0)
        pairs = known[:, :, None] & known[:, None, :]
        pairs &= ~torch.eye(order.shape[1], dtype=torch.bool, device=logits.device)
        if not pairs.any():
            return logits.sum() * 0.0
        before = (order[:, :, None] < order[:, None, :]).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits[pairs], before[pairs])

    @torch.no_grad()
    def predict(self, task: str, batch: Mapping[str, Tensor]) -> list:
        """Per sample: the index of the best candidate (-1 where no candidate is valid); reading order: the
        predicted reading position of each valid context panel (``TaskSample.order``'s convention)."""
        logits = self.task_logits(task, batch)
        if task == READING_ORDER:
            return self.decode_order(logits, batch["context_mask"])
        best = logits.argmax(dim=-1)
        return torch.where(torch.isfinite(logits).any(dim=-1), best, -1).tolist()

    @staticmethod
    def decode_order(pair_logits: Tensor, mask: Tensor | None = None) -> list[list[int]]:
        """A permutation per sample from (B, L, L) pair logits: position of each valid panel (in context order).

        Panels are ranked by their summed chance of preceding each other (Borda), ties by their place in the list,
        then adjacent panels the pair logits disagree with are swapped until none is left; each swap raises the
        pairwise agreement, so it stops, and the result is always a permutation of the valid panels."""
        chance = torch.sigmoid(torch.nan_to_num(pair_logits.detach().double(), nan=0.0)).cpu().numpy()
        valid = np.ones(chance.shape[:2], dtype=bool) if mask is None else mask.detach().cpu().numpy() > 0  # (B, L)
        orders = []
        for b in range(chance.shape[0]):
            keep = np.flatnonzero(valid[b])
            before = chance[b][np.ix_(keep, keep)]  # (K, K)
            wins = before.sum(axis=1) - np.diag(before)
            ranking = list(np.argsort(-wins, kind="stable"))  # panels, first read first
            swapped = True
            while swapped:
                swapped = False
                for k in range(len(ranking) - 1):
                    first, second = ranking[k], ranking[k + 1]
                    if before[second, first] > before[first, second]:
                        ranking[k], ranking[k + 1] = second, first
                        swapped = True
            positions = np.empty(len(keep), dtype=np.int64)
            positions[ranking] = np.arange(len(keep))
            orders.append(positions.tolist())
        return orders

    # ------------------------------------------------------------------------------------------------ strips

    def strip_loss(self, panel_embeddings: Tensor, panel_mask: Tensor, temperature: float = 0.1) -> Tensor:
        """Symmetric InfoNCE between two views of each page (each panel dropped with chance 1/4, at least one
        kept): a page's strip must find its other view among the batch's other pages; pages with no panel and
        batches of fewer than two pages give 0."""
        mask = as_mask(panel_mask, panel_embeddings)
        keep = mask.any(dim=1)
        panel_embeddings, mask = panel_embeddings[keep], mask[keep]
        if len(mask) < 2:
            return self.strip_pool.query.sum() * 0.0  # a zero that backward accepts when it is the only term
        views = [F.normalize(self.encode_strip(panel_embeddings, drop_panels(mask)), dim=-1) for _ in range(2)]
        logits = views[0] @ views[1].T / temperature  # (B, B)
        targets = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def input_prior(batch: Mapping[str, Tensor], candidates: Tensor) -> Tensor:
    """(B, C) the no-learning score of each raw candidate: its cosine to the sample's caption where it has one, else
    to the mean of its context panels (the masked place, a zero row, left out); 0 with neither. The same score as
    the ``stage3_cosine`` baseline, so the model starts from it."""
    device = candidates.device
    context = batch["context"].to(device)
    present = batch["context_mask"].to(device).bool() & (context.abs().sum(dim=-1) > 0)  # (B, L)
    mean = (context * present[..., None]).sum(dim=1) / present.sum(dim=1, keepdim=True).clamp(min=1)
    query = batch.get("query")
    if query is not None:
        query = query.to(device)
        mean = torch.where(query.abs().sum(dim=-1, keepdim=True) > 0, query, mean)
    return torch.einsum("bd,bcd->bc", F.normalize(mean, dim=-1), F.normalize(candidates, dim=-1))


def gain_groups(module: nn.Module, lr: float) -> list[dict[str, Any]]:
    """Optimiser parameter groups: the heads' scalar gains (``GAINS``) at ``GAIN_LR`` times ``lr`` without weight
    decay (a scalar moves about the rate a step under Adam, too slowly for a gain of tens), the rest at the rate."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    gains = [p for n, p in named if n.rsplit(".", 1)[-1] in GAINS]
    rest = [p for n, p in named if n.rsplit(".", 1)[-1] not in GAINS]
    return [{"params": rest}, {"params": gains, "lr": lr * GAIN_LR, "weight_decay": 0.0}]


@torch.no_grad()
def fit_prior_weight(
    prior: Tensor, mask: Tensor, answer: Tensor, spread: float = PRIOR_WEIGHT, steps: int = 50
) -> float:
    """The multiple w of the no-learning score (``input_prior``, (N, C)) under which softmax(w * prior) over each
    sample's candidates (``mask``) best gives the ``answer`` s: the most probable w under a normal prior of standard
    deviation ``spread`` around 0 (so a few samples, or candidates the score barely tells apart, cannot send it to
    the bound), by Newton's method on the concave one-dimensional log posterior; within +-``MAX_SCALE``. A score
    that points away from the answer gets a negative weight; one that says nothing, about zero. Samples without an
    answer (-1) are left out."""
    keep = answer >= 0
    prior, mask, answer = prior[keep].double(), mask[keep].bool(), answer[keep]
    if not len(answer):
        return 0.0
    prior = prior.masked_fill(~mask, 0.0)
    chosen = prior[torch.arange(len(answer)), answer]
    weight = 0.0
    for _ in range(steps):
        p = torch.softmax((weight * prior).masked_fill(~mask, -torch.inf), dim=1)
        mean = (p * prior).sum(dim=1)
        gradient = float((chosen - mean).sum()) - weight / spread**2  # d/dw of the log posterior
        curvature = float((p * (prior - mean[:, None]) ** 2).sum()) + 1 / spread**2  # minus its second derivative
        step = gradient / curvature
        weight = float(np.clip(weight + step, -MAX_SCALE, MAX_SCALE))
        if abs(step) < 1e-6 or abs(weight) == MAX_SCALE:
            break
    return weight


def drop_panels(mask: Tensor, rate: float = 0.25) -> Tensor:
    """A random view of pages: each valid panel dropped with chance ``rate``; a page left with none keeps one."""
    kept = mask & (torch.rand(mask.shape, device=mask.device) >= rate)
    empty = ~kept.any(dim=1) & mask.any(dim=1)
    if empty.any():
        # One valid panel picked at random: noise only on valid places, argmax takes the best of them.
        pick = (torch.rand(mask.shape, device=mask.device) + mask.float()).argmax(dim=1)
        kept[empty, pick[empty]] = True
    return kept
