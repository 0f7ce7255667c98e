"""What a request may cost before it is served, refused as early as possible.

Owns: reading the upload within its byte limit (``uploads``), admission (``admission``: header,
model, queue place, pixel and body budgets), the in-flight budgets themselves (``budget``) and
giving memory back to the system between bursts (``memory``). A new limit or a changed price
lives here.
"""
