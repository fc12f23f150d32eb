"""Providers' native layouts in: deliveries files, formats, and mappings (rename, recode, parse dates,
clean NHS numbers), applied lazily as the raw data is read. See delivery.py and mapping.py."""

from __future__ import annotations

from pipeline.lazy import lazy_exports

_EXPORTS = {
    "Delivery": "pipeline.deliveries.delivery",
    "FORMATS": "pipeline.deliveries.delivery",
    "load_deliveries": "pipeline.deliveries.delivery",
    "scan_delivery": "pipeline.deliveries.delivery",
    "Mapping": "pipeline.deliveries.mapping",
    "load_mapping": "pipeline.deliveries.mapping",
    "to_canonical": "pipeline.deliveries.mapping",
    "to_native": "pipeline.deliveries.mapping",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
