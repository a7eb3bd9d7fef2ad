"""The web console: fleet (edge sites), cluster, topics and consumer groups,
served by a broker on `console.listen` (aiohttp, Jinja2, no CDN)."""
