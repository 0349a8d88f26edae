"""The prototype (the float tensors of one PETL module) and a layer's masked view of it.

Every method is expressed the same way so that one code path serves all of
them: a :class:`Prototype` holds each tensor stacked over ``copies``, and each
layer owns a :class:`PrototypeLayer` that reads copy ``index`` and multiplies
the masked tensors by its own :class:`~propetl.masks.Mask`.

=====================  ======  ======
method                 copies  masks
=====================  ======  ======
adapter / lora / prefix  L       no
propetl-*  (share=layers)  1      yes   (mask_mode=none: no)
propetl-*  (share=none)    L      yes
=====================  ======  ======

With one copy the prototype is a single Parameter used by every layer, so its
gradient is the sum of the layers' gradients, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .masks import Mask

Init = Callable[[torch.Tensor], object]


class Prototype(nn.Module):
    """Named float tensors of one PETL module, each stacked as ``[copies, *shape]``."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], inits: dict[str, Init], copies: int):
        super().__init__()
        self.shapes = dict(shapes)
        self.copies = copies
        self.weights = nn.ParameterDict()
        for name, shape in self.shapes.items():
            tensor = torch.empty(copies, *shape)
            for copy in tensor:
                inits[name](copy)
            self.weights[name] = nn.Parameter(tensor)

    def tensors(self, index: int) -> dict[str, torch.Tensor]:
        """The tensors copy ``index`` computes with."""
        return {name: weight[index] for name, weight in self.weights.items()}

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """What an artifact stores: the float tensors in their final (folded) form."""
        return {name: weight.detach() for name, weight in self.weights.items()}

    def load_stored(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`stored_tensors`; shapes must match exactly."""
        for name, weight in self.weights.items():
            if name not in tensors:
                raise ValueError(f"prototype tensor {name!r} missing from artifact")
            if tuple(tensors[name].shape) != tuple(weight.shape):
                raise ValueError(
                    f"prototype tensor {name!r} has shape {tuple(tensors[name].shape)} in the artifact "
                    f"but {tuple(weight.shape)} in this model (different backbone or PETL config?)"
                )
            with torch.no_grad():
                weight.copy_(tensors[name])


class PrototypeLayer(nn.Module):
    """One layer's view of a prototype: which copy it reads and which masks it applies.

    The prototype is registered once on the model (see :func:`propetl.petl_model.apply_petl`)
    and only *referenced* here, so it appears once in ``parameters()`` and the
    state dict however many layers share it.
    """

    def __init__(self, prototype: Prototype, index: int, masks: dict[str, Mask]):
        super().__init__()
        self.__dict__["prototype"] = prototype
        self.index = index
        self.masks = nn.ModuleDict(masks)
        self.merged = False

    def weights(self) -> dict[str, torch.Tensor]:
        """The tensors this layer computes with: prototype copy times its masks."""
        if self.merged:
            return {name: buffer for name, buffer in self.named_buffers(recurse=False)}
        tensors = self.prototype.tensors(self.index)
        return {name: t * self.masks[name]() if name in self.masks else t for name, t in tensors.items()}

    @torch.no_grad()
    def merge(self) -> None:
        """Materialise the masked tensors once so inference does no top-k."""
        for name, tensor in self.weights().items():
            self.register_buffer(name, tensor.detach().clone(), persistent=False)
        self.merged = True
