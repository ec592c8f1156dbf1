"""The relay: every verified delivery forwarded to the payment backends in ``relay.targets``, from the inbox."""
