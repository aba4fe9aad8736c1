use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{Error, Packet, Publish};
use crate::mqttbytes::{parse_fixed_header, QoS};

/// ddc-edge patch: the payload a PUBLISH over `max_incoming_size` is delivered with. The
/// packet's topic, QoS, retain flag and packet id are kept (so it is acknowledged as
/// usual); its payload bytes are skipped as they arrive, never buffered, and the
/// connection stays up. Upstream rumqttc ends the connection instead, so one oversized
/// retained message puts a client into a reconnect loop.
pub const DISCARDED_OVERSIZED: &[u8] = b"\0rumqttc: oversized PUBLISH payload discarded";

/// MQTT v4 codec
#[derive(Debug, Clone)]
pub struct Codec {
    /// Maximum packet size allowed by client
    pub max_incoming_size: usize,
    /// Maximum packet size allowed by broker
    pub max_outgoing_size: usize,
    /// ddc-edge patch: bytes of a discarded PUBLISH still to skip.
    pub skip: usize,
}

impl Decoder for Codec {
    type Item = Packet;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        if self.skip > 0 {
            let n = self.skip.min(src.len());
            src.advance(n);
            self.skip -= n;
            if self.skip > 0 {
                return Ok(None);
            }
        }
        match Packet::read(src, self.max_incoming_size) {
            Ok(packet) => Ok(Some(packet)),
            Err(Error::InsufficientBytes(b)) => {
                // Get more packets to construct the incomplete packet
                src.reserve(b);
                Ok(None)
            }
            Err(Error::PayloadSizeLimitExceeded(len)) => self.discard_publish(src, len),
            Err(e) => Err(e),
        }
    }
}

impl Codec {
    /// An oversized packet: if it is a PUBLISH, deliver its header with
    /// [`DISCARDED_OVERSIZED`] as payload and skip the rest; anything else is an error.
    fn discard_publish(&mut self, src: &mut BytesMut, len: usize) -> Result<Option<Packet>, Error> {
        let header = parse_fixed_header(src.iter())?;
        let byte1 = header.byte1();
        if byte1 >> 4 != 3 {
            return Err(Error::PayloadSizeLimitExceeded(len));
        }
        let qos = match (byte1 >> 1) & 0b11 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            q => return Err(Error::InvalidQoS(q)),
        };
        let at = header.fixed_header_len();
        // Topic length, topic, and a packet id for QoS > 0: at most 65 541 bytes, so
        // buffering them is bounded whatever the packet claims.
        if src.len() < at + 2 {
            src.reserve(at + 2 - src.len());
            return Ok(None);
        }
        let topic_len = u16::from_be_bytes([src[at], src[at + 1]]) as usize;
        let pkid_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
        let prefix = at + 2 + topic_len + pkid_len;
        if prefix > header.frame_length() {
            return Err(Error::BoundaryCrossed(prefix));
        }
        if src.len() < prefix {
            src.reserve(prefix - src.len());
            return Ok(None);
        }
        let topic = std::str::from_utf8(&src[at + 2..at + 2 + topic_len])
            .map_err(|_| Error::TopicNotUtf8)?
            .to_string();
        let pkid = if pkid_len == 2 {
            u16::from_be_bytes([src[at + 2 + topic_len], src[at + 3 + topic_len]])
        } else {
            0
        };
        src.advance(prefix);
        self.skip = header.frame_length() - prefix;
        let n = self.skip.min(src.len());
        src.advance(n);
        self.skip -= n;
        Ok(Some(Packet::Publish(Publish {
            dup: byte1 & 0b1000 != 0,
            qos,
            retain: byte1 & 1 != 0,
            topic,
            pkid,
            payload: Bytes::from_static(DISCARDED_OVERSIZED),
        })))
    }
}

impl Encoder<Packet> for Codec {
    type Error = Error;

    fn encode(&mut self, item: Packet, dst: &mut BytesMut) -> Result<(), Self::Error> {
        item.write(dst, self.max_outgoing_size)?;

        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio_util::codec::Encoder;

    use super::Codec;
    use crate::{mqttbytes::Error, Packet, Publish, QoS};

    #[test]
    fn outgoing_max_packet_size_check() {
        let mut buf = BytesMut::new();
        let mut codec = Codec {
            max_incoming_size: 100,
            max_outgoing_size: 200,
            skip: 0,
        };

        let mut small_publish = Publish::new("hello/world", QoS::AtLeastOnce, vec![1; 100]);
        small_publish.pkid = 1;
        codec
            .encode(Packet::Publish(small_publish), &mut buf)
            .unwrap();

        let large_publish = Publish::new("hello/world", QoS::AtLeastOnce, vec![1; 265]);
        match codec.encode(Packet::Publish(large_publish), &mut buf) {
            Err(Error::OutgoingPacketTooLarge {
                pkt_size: 281,
                max: 200,
            }) => {}
            _ => unreachable!(),
        }
    }
}
