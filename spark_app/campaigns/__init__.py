"""Retention campaigns on CLTV: whom to contact, a randomized control, and a proven effect.

`cltv campaign design` targets the month's subscribers by value at risk inside channel rules and
capacities, splits each channel's list into treatment and control by a per-subscriber salted hash, and
proves the split before launch on history (an A/A simulation with the very splitter and estimator the
evaluation uses, balance against the re-split distribution, the MDE); `publish` records the contacts
(treated frozen, controls reserved through their outcome window); `evaluate` measures Retention_N and
the realized value with a stratified estimator, CUPED/CUPAC, a sample-ratio check and Holm's correction.

Modules: `rules` (audience filters, value at risk), `split` (the splitter), `stats` (the estimators),
`contacts` (the contact history: read, freeze, reserve, publish), `design`, `evaluate`.
docs/campaigns.md has the method and the definitions.
"""
