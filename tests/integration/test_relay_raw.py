"""Raw-protocol relay exchanges: exact reply sequences for what drivers send."""
import struct, time, pytest
from harness import RawPg, message
from conftest import APP_PW

def parse(name, q): return message(b"P", name + b"\0" + q + b"\0" + struct.pack("!H", 0))
def bind(stmt, val): return message(b"B", b"\0" + stmt + b"\0" + struct.pack("!HHI", 0, 1, len(val)) + val + struct.pack("!H", 0))
EX = message(b"E", b"\0" + struct.pack("!I", 0)); SYNC = message(b"S")

@pytest.mark.parametrize("n", [16000, 17000, 40000])
@pytest.mark.parametrize("named", [b"s1", b""])
@pytest.mark.parametrize("split", [False, True])
def test_raw(make_sluice, n, named, split):
    s = make_sluice(pool_mode="transaction")
    r = RawPg("127.0.0.1", s.port)
    r.login("app", APP_PW, "app")
    data = parse(named, b"SELECT length($1::text)") + bind(named, b"x" * n) + EX + SYNC
    if split:
        r.send(data[:100]); time.sleep(0.05); r.send(data[100:])
    else:
        r.send(data)
    kinds = []
    while True:
        m = r.read_msg()
        assert m is not None, kinds
        kinds.append(m[0])
        if m[0] == b"Z": break
    assert kinds == [b"1", b"2", b"D", b"C", b"Z"], kinds
