mod common;
use common::*;
use wsrelay::protocol::OpCode;

#[test]
fn echo_roundtrip_and_room_relay() {
    let h = start(test_config());
    let addr = h.local_addr();
    let mut c = RawClient::connect(addr, "/echo");
    c.send_text("hi");
    let f = c.expect_frame();
    assert_eq!((f.opcode, f.payload.as_slice()), (OpCode::Text, &b"hi"[..]));
    let mut a = RawClient::connect(addr, "/rooms/t");
    let mut b = RawClient::connect(addr, "/rooms/t");
    a.send_binary(b"x");
    let f = b.expect_frame();
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OpCode::Binary, &b"x"[..])
    );
    h.shutdown();
    h.join();
}
