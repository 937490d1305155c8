"""CamPay's callback endpoint. The path is reserved here; verification lands with the CamPay issue."""

from __future__ import annotations

from aiohttp import web

from errors import ApiError

routes = web.RouteTableDef()


@routes.route("*", "/api/payment/webhook")
async def webhook(request: web.Request) -> web.Response:
    raise ApiError("the CamPay webhook is not enabled on this server yet", code="not_implemented", status=501)
