"""Everything that speaks ASGI or Starlette: middleware, the request context, problems and the routes.

Routes parse the request, call the domain (gateway/*.py) and write the response; they keep no rule of
their own. Only gateway/app.py imports this package.
"""
