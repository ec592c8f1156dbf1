"""The kit both webhook receivers share: group commit of delivery state, replies, rejections, purge, stats.

The receivers themselves live with their providers: :mod:`exporter.whitebit.webhook` and
:mod:`exporter.zerohash.webhook`.
"""
