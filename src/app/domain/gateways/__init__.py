"""WhatsApp gateways: one adapter per gateway turns its webhooks into normalised events.

`base` is the contract, `events` the normalised events, `registry.get_adapter(kind)` the lookup. Kept free
of imports so that importing `events` (the database models do) does not load every adapter.
"""
