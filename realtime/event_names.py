"""Every Socket.IO event name and room name format, in one place."""

# client -> server
TRACK_PAYMENT = "track-payment"
STOP_TRACKING_PAYMENT = "stop-tracking-payment"

# server -> client
CONNECTED = "connected"
PAYMENT_INITIATED = "payment-initiated"
PAYMENT_STATUS = "payment-status"
PAYMENT_SUCCESS = "payment-success"
PAYMENT_FAILED = "payment-failed"
PAYMENT_EXPIRED = "payment-expired"  # a payment link nobody paid within its lifetime (never payment-failed)
PAYMENT_COMPLETED = "payment-completed"


def payment_room(reference: str) -> str:
    """The room every socket tracking `reference` joins, on every instance."""
    return f"payment:{reference}"


# authentication on long-lived sockets
REFRESH_TOKEN = "refresh-token"  # client -> server
TOKEN_EXPIRING = "token-expiring"  # server -> client
