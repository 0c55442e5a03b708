@testable import RelayStore
import Testing

/// When the shared store takes the database for gone, and when it lets calls through again. Pure.
@Suite struct DatabaseAvailabilityTests {
    @Test func aFailureStartsOneProbeAndKeepsTheFirstReasonUntilRecovered() {
        var availability = DatabaseAvailability()
        #expect(availability.isUp)
        let first = availability.failed("connectionError")
        let second = availability.failed("serverClosedConnection")
        #expect(first && !second, "one probe, started by the first failure")
        #expect(availability.downReason == "connectionError")
        availability.recovered()
        #expect(availability.isUp)
        let again = availability.failed("connectionError")
        #expect(again, "down again: a new probe")
        availability.probeStopped()
        #expect(!availability.probing)
    }

    @Test func oneSlowAnswerIsASlowStatementSeveralInARowAreASilentConnection() {
        var availability = DatabaseAvailability()
        let one = availability.answeredTooSlowly()
        availability.answered()
        let afterAnAnswer = [availability.answeredTooSlowly(), availability.answeredTooSlowly(), availability.answeredTooSlowly()]
        #expect(!one)
        #expect(afterAnAnswer == [false, false, true], "the third in a row")
        availability.recovered()
        #expect(availability.slowInARow == 0)
    }
}
