# fleet.py
"""A simulated fleet of sensors: readings to ``sensors/<id>/temp``, commands acknowledged.

    python fleet.py --port 1884 --devices 100 --interval 1

Each device publishes a temperature (a random walk) every ``--interval``
seconds and answers a command on ``devices/<id>/cmd`` with a JSON
acknowledgement on ``devices/<id>/ack``. One MQTT connection carries the
whole fleet, so that 100 devices cost one socket. It stops after
``--duration`` seconds (an hour by default) or on Ctrl-C.
"""

import argparse
import json
import random
import signal
import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1884)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=3600.0)
    args = parser.parse_args()

    names = [f"s{n}" for n in range(args.devices)]
    temperature = {name: random.uniform(18, 24) for name in names}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def on_connect(
        client: paho.Client, userdata: object, flags: object, reason: object, properties: object
    ) -> None:
        client.subscribe("devices/+/cmd", qos=1)

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        device = message.topic.split("/")[1]
        if device not in temperature:
            return
        ack = {
            "command": message.payload.decode(errors="replace")[:40],
            "ok": True,
            "temp": round(temperature[device], 2),
        }
        client.publish(f"devices/{device}/ack", json.dumps(ack), qos=1)

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"fleet-{random.randrange(1 << 30)}"
    )
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(args.host, args.port)
    client.loop_start()
    print(f"fleet: {args.devices} devices on {args.host}:{args.port}", flush=True)
    deadline = time.monotonic() + args.duration
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            for name in names:
                temperature[name] += random.uniform(-0.3, 0.3)
                client.publish(f"sensors/{name}/temp", f"{temperature[name]:.2f}", qos=0)
            stop.wait(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()


if __name__ == "__main__":
    main()
